#!/usr/bin/env bash
# Does DACDR overtake its pooling ablation and STAR with more training? The industrial bench's models at up to
# 6 epochs per phase (early stopping, patience 1) on a GPU: bash benchmarks/gpu_long.sh OUT_DIR
set -u
out=${1:?usage: gpu_long.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
start=$(date +%s)
timeout 280 python3 -m dacdr bench --preset industrial --seeds 3 --jobs 9 --epochs 6 \
  --models "STAR,DACDR,DACDR w/o DA&IA" --out /tmp/bench-long > "$out/bench_long.log" 2>&1
echo "exit $?, $(( $(date +%s) - start )) s" | tee -a "$out/bench_long.log"
cp /tmp/bench-long/table.md "$out/bench_long_table.md" 2>/dev/null || true
cp /tmp/bench-long/metrics.json "$out/bench_long_metrics.json" 2>/dev/null || true
