#!/usr/bin/env bash
# The semi-supervised CIFAR-10 tables (docs/reproduction.md, "Semi-supervised CIFAR-10") on one GPU machine: both auxiliary sets
# at once, each `python jobs/reproduce.py --config-dir ...` training JOBS runs at a time. Finished runs land in the
# progress files as they end, so a run cut short by TIME_LIMIT keeps them, and the same commands finish the rest.
# Run from the repository root; RESULTS is where the tables go (default benchmarks/results).
set -u
RESULTS=${RESULTS:-benchmarks/results}
JOBS=${JOBS:-7}
TIME_LIMIT=${TIME_LIMIT:-3600}
EXTRA=${EXTRA:-}
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
# Decode CIFAR-10 once into the tensor cache, and take one inner and outer step of every configuration on this
# device, so a setup error stops the job in seconds instead of failing its runs later.
python3 benchmarks/device/smoke.py "$EXTRA" configs/cifar10_5pct_semisup_noise || exit 1
set_args=()
for o in $EXTRA; do set_args+=(--set "$o"); done
for dir in cifar10_5pct_semisup cifar10_5pct_semisup_noise; do
  timeout "$TIME_LIMIT" python3 jobs/reproduce.py --config-dir "configs/$dir" --jobs "$JOBS" --out-dir "$RESULTS" \
    --runs-dir "/tmp/auxray_runs/$dir" "${set_args[@]}" > "/tmp/$dir.log" 2>&1 &
done
wait
for dir in cifar10_5pct_semisup cifar10_5pct_semisup_noise; do grep -v '^\[{' "/tmp/$dir.log" | tail -n 25; done
