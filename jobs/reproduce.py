"""`python jobs/reproduce.py [--quick] [--backbone resnet18] [--epochs N] [--seeds 0,1,2] [--methods a,b] [--fresh]`:
re-run the AuxiLearn paper's CIFAR-10 (5% labels) table with every method (see auxray/bench/reproduce.py).

The runs are the trials of Ray Tune grid sweeps under runs/reproduce/<tag>/ (each an MLflow child run), so an
interrupted job is resumed by running the same command again, and a later one with more methods or seeds adds
only those (--fresh starts over); the finished runs go to benchmarks/results/reproduce_<tag>.runs.jsonl, the
table to benchmarks/results/reproduce_<tag>.json and .md, and the JSON table is printed on stdout. It can also be
submitted to a Ray cluster: `ray job submit --working-dir . -- python jobs/reproduce.py`.

The repository root is put first on sys.path, so the `auxray` package comes from this working tree.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from auxray.bench.reproduce import add_arguments, run_from_args  # noqa: E402  (needs the sys.path entry above)
from auxray.bench.table_job import table_job  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(table_job("reproduce", __doc__, add_arguments, run_from_args))
