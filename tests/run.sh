#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need on a machine that has only Python,
# checks the code with ruff and the package with mypy, then runs every test: the fast default set plus those marked
# slow and cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
if ! command -v chromium >/dev/null 2>&1; then
  # Headless Chromium for the MLflow UI test (Debian's package; no browser downloads at test time).
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null;
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi
fi
# Bytecode compiled once at install, auxray's too: with PYTHONDONTWRITEBYTECODE set (as on this project's machines)
# every one of the hundreds of Python processes the tests start (CLI calls, Ray workers, Tune trials) would compile
# torch, Ray and MLflow from source again (imports 3x slower).
uv sync --frozen --compile-bytecode
uv run --frozen python -m compileall -q auxray
# Lint and format on the package, its tests and scripts, and types on the package, first (seconds): a failure here
# fails the run.
uv run --frozen ruff check auxray tests jobs benchmarks
uv run --frozen ruff format --check auxray tests jobs benchmarks
uv run --frozen mypy
exec uv run --frozen pytest -m "" --durations=15 "$@"
