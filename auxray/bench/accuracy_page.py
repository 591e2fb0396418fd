"""Sections of the accuracy tables (the reproduction and semi-supervised tables) rendered from their JSON as
Markdown: mean ± std per method, each seed, the last epoch, time against STL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from auxray.bench.markdown import md_table


def _pct(mean: float, std: float) -> str:
    """A fraction's mean ± std as percentages."""
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _per_seed(accuracies: list[float]) -> str:
    """Each seed's accuracy as a percentage."""
    return ", ".join(f"{100 * a:.1f}" for a in accuracies)


def _accuracy_table(
    data: list[dict[str, Any]], column: str, cell: Callable[[dict[str, Any]], str], accuracy: str = "test accuracy"
) -> str:
    """Per method: COLUMN (CELL of its row), ACCURACY as mean ± std, each seed, the last epoch, seconds, × STL."""
    rows = [
        [
            r["method"],
            cell(r),
            _pct(r["mean"], r["std"]),
            _per_seed(r["accuracies"]),
            _pct(r["final_mean"], r["final_std"]),
            r["seconds"],
            r.get("relative_time"),
        ]
        for r in data
    ]
    header = [
        "method",
        column,
        f"{accuracy} % (mean ± std)",
        "per seed",
        "last epoch %",
        "seconds per run",
        "time × STL",
    ]
    return md_table(header, rows)


def render_reproduce(data: list[dict[str, Any]]) -> str:
    """Measured mean ± std per method beside the paper's number (where the paper has one)."""
    return _accuracy_table(
        data,
        "paper %",
        lambda r: _pct(r["paper"]["mean"], r["paper"]["std"]) if r.get("paper") else "–",
        "auxray test accuracy",
    )


def render_semisup(data: list[dict[str, Any]]) -> str:
    """A semi-supervised table: mean ± std per method with its auxiliary set, per seed, time relative to STL."""
    return _accuracy_table(data, "auxiliary tasks", lambda r: r.get("aux_set", "–"))
