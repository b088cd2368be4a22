#!/usr/bin/env bash
# GPU checks and the GPU training throughput, in one run on a CUDA machine (docs/benchmarks.md):
#   bash benchmarks/gpu_check.sh OUT_DIR
# 1. tests/training/test_cuda.py: every registered model trains, evaluates and saves on CUDA;
# 2. benchmarks/train_throughput.py on the demo world: CUDA, then the same machine's CPU (all cores), in one run;
# 3. `dacdr bench --quick` end to end with train.device = auto (CUDA).
set -u
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
  | tee -a "$out/gpu.txt"
nproc | tee -a "$out/gpu.txt"

timeout 150 python3 -m pytest tests/training/test_cuda.py -q -p no:cacheprovider 2>&1 | tail -15 | tee "$out/cuda_tests.log"

timeout 120 python3 benchmarks/train_throughput.py --data /tmp/demo --device cuda --threads 8 \
  --batch-sizes 1024,4096,16384 --samples-per-point 400000 --out "$out/throughput_cuda.json" 2>&1 | tail -12
timeout 120 python3 benchmarks/train_throughput.py --data /tmp/demo --device cpu --threads "$(nproc)" \
  --batch-sizes 1024,4096 --samples-per-point 100000 --out "$out/throughput_cpu.json" 2>&1 | tail -8

start=$(date +%s)
timeout 150 python3 -m dacdr bench --preset industrial --quick --jobs 1 --out /tmp/bench-quick-gpu \
  > "$out/bench_quick_gpu.log" 2>&1
echo "bench --quick on the GPU: exit $?, $(( $(date +%s) - start )) s" | tee -a "$out/bench_quick_gpu.log"
cp /tmp/bench-quick-gpu/table.md "$out/bench_quick_gpu_table.md" 2>/dev/null || true
