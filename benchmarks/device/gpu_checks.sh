#!/usr/bin/env bash
# The GPU checks of the long-horizon (#19), cheap-weighting (#20) and sweep (#22) issues on one lent GPU machine, in
# the order they matter, each under its own time limit so the whole fits a short device lease:
#   1. a smoke step of every weighting-table config on the GPU (seconds);
#   2. the 64-trial sweep benchmark with fractional GPUs (4 trials per GPU), TPE + ASHA and PBT on one search seed:
#      trials per hour on the GPU (benchmarks/results/bench_sweep_scale_gpu.json);
#   3. the weighting table, helpful then harmful set, JOBS runs at once sharing the GPU (--gpus-per-trial); finished
#      runs land in the progress files as they end, so a cut keeps them and the same command finishes the rest later.
# Run from the repository root; OUT is where the JSON goes (default benchmarks/results).
set -u
OUT=${OUT:-benchmarks/results}
JOBS=${JOBS:-16}
GPUS_PER_TRIAL=${GPUS_PER_TRIAL:-0.0625}  # JOBS table runs share the one GPU (without it they would train on the CPUs)
SWEEP_LIMIT=${SWEEP_LIMIT:-150}
TABLE_LIMIT=${TABLE_LIMIT:-360}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
python3 benchmarks/device/smoke.py "" configs/cifar10_5pct_semisup configs/cifar10_5pct_semisup_noise || exit 1
timeout "$SWEEP_LIMIT" python3 -m auxray.cli bench sweep configs/sweeps/scale_weights.yaml --seeds 0 \
  --strategies tpe_asha,pbt --concurrency 4 --gpus-per-trial 0.25 --storage /tmp/bench-sweep-gpu \
  --out "$OUT/bench_sweep_scale_gpu.json" > /tmp/bench_sweep_gpu.log 2>&1
tail -n 3 /tmp/bench_sweep_gpu.log
timeout "$TABLE_LIMIT" python3 jobs/weighting.py --sets helpful,harmful --jobs "$JOBS" \
  --gpus-per-trial "$GPUS_PER_TRIAL" --out-dir "$OUT" > /tmp/weighting.log 2>&1
grep -v '^\[{' /tmp/weighting.log | tail -n 25
