"""The weighting table's rows: per auxiliary set, one row per method or fixed twin with finished runs (accuracy of
the best-on-validation and of the last epoch's weights, ``bench.table.build_table``), its compute and its tasks'
final weights; the harmful set's ``equal_helpful_subset`` row; and which rows still miss seeds.

compute: the total wall seconds of the runs behind a row (every seed's run; for ``weight_search`` also every trial
of the search, added by ``bench.weighting.with_search``).
final_weights: per task, the mean over seeds of its weight after the last epoch (the runs' ``task_weight/<task>``
diagnostics); ``{}`` for a method that reports none.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from auxray.bench.table import build_table
from auxray.method_specs import EQUAL_WEIGHTS

ROW_KEYS = (
    "method",
    "aux_set",
    "mean",
    "std",
    "final_mean",
    "final_std",
    "accuracies",
    "final_accuracies",
    "seeds",
    "seconds",
    "compute",
    "final_weights",
)
WEIGHT_PREFIX = "task_weight/"


def final_weights(runs: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Each task's weight after the last epoch, the mean over the runs that report it ({} when none does)."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for key, value in run.get("diagnostics", {}).items():
            if key.startswith(WEIGHT_PREFIX) and value is not None:
                values.setdefault(key.removeprefix(WEIGHT_PREFIX), []).append(float(value))
    return {task: statistics.fmean(vs) for task, vs in sorted(values.items())}


def set_rows(
    aux_set: str,
    keys: Sequence[str],
    runs: Mapping[str, Sequence[dict[str, Any]]],
    twins: Mapping[str, str],
    subset_runs: Sequence[dict[str, Any]] = (),
    subset_row: str = "equal_helpful_subset",
    subset_after: str = EQUAL_WEIGHTS,
) -> list[dict[str, Any]]:
    """The rows of one set in `keys` order (each method, then its twin): runs by key; twins: method -> its twin's
    key (its row names it); subset_runs: the helpful set's runs of the same method (the subset row, placed after
    `subset_after`, or last when that has no row)."""
    named = {k: [dict(r, method=k) for r in rs] for k, rs in runs.items()}
    order = list(keys)
    if subset_runs:
        named[subset_row] = [dict(r, method=subset_row) for r in subset_runs]
        order.insert(order.index(subset_after) + 1 if subset_after in order else len(order), subset_row)
    table = build_table([r for k in order for r in named.get(k, [])], order)
    rows = []
    for t in table:
        behind = named[t["method"]]
        row = {k: t[k] for k in ROW_KEYS if k in t}
        row.update(
            aux_set=aux_set,
            compute=sum(float(r["seconds"]) for r in behind),
            final_weights=final_weights(behind),
        )
        if t["method"] in twins:
            row["twin"] = twins[t["method"]]
        row["settings"] = behind[0].get("settings", {})
        rows.append({k: row[k] for k in (*ROW_KEYS, "twin", "settings") if k in row})
    return rows


def completeness(
    aux_set: str, keys: Sequence[str], seeds: Sequence[int], done: Mapping[str, Sequence[int]]
) -> tuple[list[str], list[str]]:
    """(complete, incomplete) lines for the stderr report: each (method, aux_set) row with every seed, and the
    others with the seeds they miss. done: key -> seeds finished."""
    complete, incomplete = [], []
    for k in keys:
        missing = [s for s in seeds if s not in done.get(k, ())]
        if missing:
            incomplete.append(f"{k} ({aux_set}): missing seed(s) {', '.join(map(str, missing))}")
        else:
            complete.append(f"{k} ({aux_set})")
    return complete, incomplete
