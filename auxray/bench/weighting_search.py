"""The weighting table's ``weight_search`` row, from a finished weight-search sweep (``auxray sweep
configs/sweeps/weight_search_semisup*.yaml``): its best trial's weights, chosen on validation, are trained again on
the table's seeds (equal's config at those weights), so the row has both selections and a spread like every other
row; its compute is the search's, every trial's seconds summed (ASHA-stopped trials included), plus those runs'.

The sweep is read from its Tune experiment folder (``<storage>/<name>``: one folder per trial with Tune's
``result.json``, a JSON line per epoch report, the last with the trial's ``time_total_s``, its wall seconds in Tune
start-up included, and, once it ran every epoch, its test accuracy), or from the JSON ``auxray sweep --json``
printed (its ``experiment_dir`` names the folder). The best trial is the highest ``best_val_accuracy`` among the
trials that ran every epoch, as the sweep's own summary picks it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from auxray.errors import UserError

WEIGHT_KEY = "method.task_weights."


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


@dataclass(frozen=True)
class SearchResult:
    """What the table keeps of a finished weight search: its best trial's weights (chosen on validation), that
    trial's own test accuracy (one seed, for reference), and the search's size and compute."""

    weights: dict[str, float]
    compute: float
    trials: int
    trials_complete: int
    best_val_accuracy: float
    test_accuracy: float
    source: str

    def overrides(self) -> tuple[str, ...]:
        """The weights as config overrides of equal's config: the row's runs, one per table seed."""
        return tuple(f"{WEIGHT_KEY}{task}={w!r}" for task, w in sorted(self.weights.items()))

    def save(self, path: Path) -> None:
        """Keep it beside the set's run records, so a later invocation shows the row without the sweep folder."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SearchResult | None:
        """What save wrote, or None when there is no such file."""
        return cls(**json.loads(path.read_text())) if path.is_file() else None


def read_search(path: str | Path) -> SearchResult:
    """A finished sweep at `path` (see the module docstring); one without a trial that ran every epoch is a
    UserError."""
    folder = experiment_dir(Path(path))
    results = trial_results(folder)
    complete = [r for r in results if r.get("test_accuracy") is not None and r.get("best_val_accuracy") is not None]
    if not complete:
        raise UserError(f"--search-result {folder}: no trial ran every epoch yet ({len(results)} trial(s) so far)")
    best = max(complete, key=lambda r: float(r["best_val_accuracy"]))
    params = best.get("config", {})
    weights = {k.removeprefix(WEIGHT_KEY): float(v) for k, v in params.items() if k.startswith(WEIGHT_KEY)}
    if not weights:
        raise UserError(f"--search-result {folder}: its best trial sets no {WEIGHT_KEY}<task>; not a weight search")
    return SearchResult(
        weights=weights,
        compute=sum(float(r.get("time_total_s", 0.0)) for r in results),
        trials=len(results),
        trials_complete=len(complete),
        best_val_accuracy=float(best["best_val_accuracy"]),
        test_accuracy=float(best["test_accuracy"]),
        source=str(folder),
    )


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
