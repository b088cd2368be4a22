#!/usr/bin/env bash
# Does a plain mean of the history (the proportions softmax attention drops) close DACDR's gap to its pooling
# ablation? The industrial bench's budget, 3 seeds, on a GPU: bash benchmarks/gpu_mean.sh OUT_DIR
set -u
out=${1:?usage: gpu_mean.sh OUT_DIR}
mkdir -p "$out"
start=$(date +%s)
timeout 200 python3 -m dacdr bench --preset industrial --seeds 3 --jobs 9 \
  --models "DACDR,DACDR +mean,DACDR w/o DA&IA" --out /tmp/bench-mean > "$out/bench_mean.log" 2>&1
echo "exit $?, $(( $(date +%s) - start )) s" | tee -a "$out/bench_mean.log"
cp /tmp/bench-mean/table.md "$out/bench_mean_table.md" 2>/dev/null || true
cp /tmp/bench-mean/metrics.json "$out/bench_mean_metrics.json" 2>/dev/null || true
