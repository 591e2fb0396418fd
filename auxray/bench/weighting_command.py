"""The weighting table's command line (`python jobs/weighting.py`, `auxray bench weighting`): its options, and the
line that repeats an invocation (kept with the runs it trains and on the table's page)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from auxray.bench.table_runs import add_run_options, run_options_parts
from auxray.bench.weighting_sets import AUX_SETS, DEFAULT_SETS


def canonical_command(
    sets: Sequence[str],
    methods: Sequence[str] | None,
    seeds: Sequence[int] | None,
    epochs: int | None,
    quick: bool,
    extra_overrides: Sequence[str],
    out_dir: str | Path,
    runs_dir: str | Path | None,
    search_results: Sequence[str],
    track: str | None,
    jobs: int,
    gpus_per_trial: float = 0.0,
) -> str:
    """The `python jobs/weighting.py ...` line that repeats this invocation."""
    parts = ["python", "jobs/weighting.py"]
    if quick:
        parts.append("--quick")
    if tuple(sets) != DEFAULT_SETS:
        parts += ["--sets", ",".join(sets)]
    if methods is not None:
        parts += ["--methods", ",".join(methods)]
    if seeds is not None:
        parts += ["--seeds", ",".join(map(str, seeds))]
    if epochs is not None:
        parts += ["--epochs", str(epochs)]
    if str(out_dir) != "benchmarks/results":
        parts += ["--out-dir", str(out_dir)]
    if runs_dir is not None:
        parts += ["--runs-dir", str(runs_dir)]
    for item in search_results:
        parts += ["--search-result", item]
    return shlex.join(parts + run_options_parts(track, jobs, extra_overrides, gpus_per_trial))


def add_arguments(p: Any) -> None:
    """The options shared by `python jobs/weighting.py` and `auxray bench weighting`."""
    p.add_argument(
        "--sets",
        default=",".join(DEFAULT_SETS),
        help=f"comma-separated aux-task sets, in the order they train (default {','.join(DEFAULT_SETS)}; "
        f"known: {', '.join(AUX_SETS)})",
    )
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated config names to train, in every set's folder (default: all of each); "
        "the table keeps every row on record either way",
    )
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; --quick: 0)")
    p.add_argument("--epochs", type=int, default=None, help="epoch budget of every run (default: the configs')")
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 seed, 1 epoch, 40 labelled images per class, 1,000 test images (files tagged quick)",
    )
    p.add_argument("--out-dir", default="benchmarks/results", help="where the table, page and run records go")
    p.add_argument(
        "--runs-dir",
        default=None,
        help="folder of the Tune experiments (one subfolder per set), run configs and MLflow store "
        "(default runs/weighting/<tag>)",
    )
    p.add_argument(
        "--search-result",
        dest="search_results",
        action="append",
        default=[],
        metavar="[SET=]PATH",
        help="a finished weight-search sweep (its Tune experiment folder or `auxray sweep --json` output): its best "
        "weights on validation train on the table's seeds as the set's weight_search row (a bare PATH: the first "
        "set's; repeatable)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="train nothing and write no table: the rows of the runs finished so far (JSON) and, on stderr, the "
        "complete rows and each set's runs left to train",
    )
    add_run_options(p, "config override applied to every run (repeatable)")
