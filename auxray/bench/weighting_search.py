"""The weighting table's ``weight_search`` row, from a finished weight-search sweep (``auxray sweep
configs/sweeps/weight_search_semisup*.yaml``): its best trial chosen on validation, that trial's test accuracy,
and the search's compute, every trial's seconds summed (ASHA-stopped trials included).

The sweep is read from its Tune experiment folder (``<storage>/<name>``: one folder per trial with Tune's
``result.json``, a JSON line per epoch report, the last with the trial's ``time_total_s``, its wall seconds in Tune
start-up included, and, once it ran every epoch, its test accuracy), or from the JSON ``auxray sweep --json``
printed (its ``experiment_dir`` names the folder). The best trial is the highest ``best_val_accuracy`` among the
trials that ran every epoch, as the sweep's own summary picks it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from auxray.errors import UserError

WEIGHT_KEY = "method.task_weights."
SEED_KEYS = ("trainer.seed", "seed")  # a searched seed, or a grid's seed axis


def _last_result(path: Path) -> dict[str, Any] | None:
    """The last whole JSON line of a trial's result.json (a torn last line is skipped)."""
    last = None
    for line in path.read_text().splitlines():
        try:
            last = json.loads(line)
        except json.JSONDecodeError:
            continue
    return last


def experiment_dir(path: Path) -> Path:
    """The Tune experiment folder a --search-result names: the folder itself, or the sweep JSON's experiment_dir."""
    if path.is_dir():
        return path
    if not path.is_file():
        raise UserError(f"--search-result {path}: no such file or folder")
    try:
        summary = json.loads(path.read_text().strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise UserError(f"--search-result {path}: not the JSON of a finished sweep") from None
    folder = Path(str(summary.get("experiment_dir", "")))
    if not summary.get("experiment_dir") or not folder.is_dir():
        raise UserError(f"--search-result {path}: its experiment folder {folder} is not there")
    return folder


def trial_results(folder: Path) -> list[dict[str, Any]]:
    """The last Tune result of every trial under an experiment folder; none is a UserError."""
    results = [r for p in sorted(folder.glob("*/result.json")) if (r := _last_result(p)) is not None]
    if not results:
        raise UserError(f"--search-result {folder}: no trial results (result.json) in that experiment folder")
    return results


def search_row(path: str | Path, aux_set: str) -> dict[str, Any]:
    """The weight_search row of `aux_set` from a finished sweep at `path` (see the module docstring)."""
    folder = experiment_dir(Path(path))
    results = trial_results(folder)
    complete = [r for r in results if r.get("test_accuracy") is not None and r.get("best_val_accuracy") is not None]
    if not complete:
        raise UserError(f"--search-result {folder}: no trial ran every epoch yet ({len(results)} trial(s) so far)")
    best = max(complete, key=lambda r: float(r["best_val_accuracy"]))
    params = best.get("config", {})
    test = float(best["test_accuracy"])
    final = best.get("final_test_accuracy")
    return {
        "method": "weight_search",
        "aux_set": aux_set,
        "mean": test,
        "std": 0.0,
        "final_mean": None if final is None else float(final),
        "final_std": None if final is None else 0.0,
        "accuracies": [test],
        "final_accuracies": [] if final is None else [float(final)],
        "seeds": [params[k] for k in SEED_KEYS if k in params][:1],
        "seconds": float(best.get("time_total_s", 0.0)),
        "compute": sum(float(r.get("time_total_s", 0.0)) for r in results),
        "final_weights": {k.removeprefix(WEIGHT_KEY): float(v) for k, v in params.items() if k.startswith(WEIGHT_KEY)},
        "trials": len(results),
        "trials_complete": len(complete),
        "best_val_accuracy": float(best["best_val_accuracy"]),
        "params": params,
        "source": str(folder),
    }


def parse_search_results(items: list[str], sets: tuple[str, ...]) -> dict[str, Path]:
    """`--search-result [SET=]PATH` options as set -> path (a bare path is the first set's); a set not asked for
    or given twice is a UserError."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        aux_set, text = (name, rest) if sep and name in sets else (sets[0], item)
        if sep and name not in sets and not Path(item).exists():
            raise UserError(f"--search-result {item}: {name} is not one of the sets asked for ({', '.join(sets)})")
        if aux_set in out:
            raise UserError(f"--search-result given twice for aux-task set {aux_set}")
        out[aux_set] = Path(text)
    return out
