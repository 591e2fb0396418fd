"""`python jobs/side_labels.py [--root ZIP] [--seed 0] [--out PATH]`: the side-label table of CIFAR-10's training
images (auxray/data/side_labels.py) that configs/cifar10_5pct_semisup_side reads as data.aux_table.

The committed table is `python jobs/side_labels.py` from the repository root (seed 0, ../shared/data's zip); the
same seed and images give the same file. The repository root is put first on sys.path, so the `auxray` package
comes from this working tree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from auxray.data.side_labels import SEED, cifar10_side_labels, write_side_labels  # noqa: E402  (needs sys.path)
from auxray.errors import UserError  # noqa: E402

DEFAULT_ROOT = "../shared/data/cifar10-images.zip"
DEFAULT_OUT = "configs/cifar10_5pct_semisup_side/side_labels.parquet"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/side_labels.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", default=DEFAULT_ROOT, help=f"CIFAR-10 (zip, folder or batches; default {DEFAULT_ROOT})"
    )
    parser.add_argument(
        "--seed", type=int, default=SEED, help=f"seed of the missing cells and the random column ({SEED})"
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"the Parquet file to write (default {DEFAULT_OUT})")
    parser.add_argument("--cache-dir", default=None, help="decoded-image cache (default: auxray's data home)")
    args = parser.parse_args(argv)
    try:
        table = cifar10_side_labels(args.root, args.seed, args.cache_dir)
    except UserError as err:
        print(f"side_labels: error: {err}", file=sys.stderr)
        return 2
    path = write_side_labels(table, args.out)
    print(f"wrote {path}: {table.num_rows} images, columns {', '.join(table.column_names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
