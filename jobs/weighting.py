"""`python jobs/weighting.py [--quick] [--sets helpful,harmful] [--methods a,b] [--seeds 0,1,2] [--jobs N]`:
the weighting table (semi-supervised
CIFAR-10, 5% labels: helpful and harmful auxiliary sets, each method beside its fixed twin; see
auxray/bench/weighting.py).

The runs are the trials of Ray Tune grid sweeps under runs/weighting/<tag>/<set>/ (each an MLflow child run), so
an interrupted job is resumed by running the same command again, and a later one with more methods or seeds adds
only those (--fresh starts over); every row with runs on record stays in the table, whichever methods are named.
Each set's finished runs go to benchmarks/results/weighting_<tag>.<set>.runs.jsonl, the table to
benchmarks/results/weighting_<tag>.json and .md, and the JSON rows are printed on stdout.

The repository root is put first on sys.path, so the `auxray` package comes from this working tree.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from auxray.bench.table_job import table_job  # noqa: E402
from auxray.bench.weighting import run_from_args  # noqa: E402  (needs the sys.path entry above)
from auxray.bench.weighting_command import add_arguments  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(table_job("weighting", __doc__, add_arguments, run_from_args))
