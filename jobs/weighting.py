"""`python jobs/weighting.py [--quick] [--sets helpful,harmful] [--methods a,b] [--seeds 0,1,2] [--jobs N]`:
the weighting table (semi-supervised
CIFAR-10, 5% labels: helpful and harmful auxiliary sets, each method beside its fixed twin; see
auxray/bench/weighting.py).

The runs are the trials of Ray Tune grid sweeps under runs/weighting/<tag>/<set>/ (each an MLflow child run), so
an interrupted job is resumed by running the same command again, and a later one with more methods or seeds adds
only those (--fresh starts over); each set's finished runs go to
benchmarks/results/weighting_<tag>.<set>.runs.jsonl, the table to benchmarks/results/weighting_<tag>.json and .md,
and the JSON rows are printed on stdout.

The repository root is put first on sys.path, so the `auxray` package comes from this working tree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from auxray.bench.weighting import run_from_args  # noqa: E402  (needs the sys.path entry above)
from auxray.bench.weighting_command import add_arguments  # noqa: E402
from auxray.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/weighting.py", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        rows = run_from_args(args)
    except UserError as err:
        print(f"weighting: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "weighting: interrupted; finished trials are kept (run the same command again to resume)", file=sys.stderr
        )
        return 130
    print(json.dumps(rows, default=float), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
