#!/usr/bin/env bash
# GPU throughput (CUDA vs this machine's CPU, one run) and the full `dacdr bench` on the GPU:
#   bash benchmarks/gpu_bench.sh OUT_DIR
set -u
out=${1:?usage: gpu_bench.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
timeout 100 python3 benchmarks/train_throughput.py --data /tmp/demo --device cuda --threads 8 \
  --batch-sizes 1024,4096,16384 --samples-per-point 300000 --out "$out/throughput_cuda.json" 2>&1 | tail -9
start=$(date +%s)
timeout 330 python3 -m dacdr bench --preset industrial --seeds 3 --jobs 4 --out /tmp/bench-gpu \
  > "$out/bench_gpu.log" 2>&1
echo "dacdr bench --seeds 3 --jobs 4 on the GPU: exit $?, $(( $(date +%s) - start )) s" | tee -a "$out/bench_gpu.log"
cp /tmp/bench-gpu/table.md "$out/bench_gpu_table.md" 2>/dev/null || true
cp /tmp/bench-gpu/metrics.json "$out/bench_gpu_metrics.json" 2>/dev/null || true
