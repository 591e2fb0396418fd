"""The weighting table's page and the README's summary of it: a margin over a fixed twin is paired by seed, a time
ratio is per run, and every method has one summary row across the auxiliary sets."""

from __future__ import annotations

from statistics import fmean, pstdev
from typing import Any

from auxray.bench.weighting_page import render_markdown, render_summary


def _row(method: str, aux_set: str, best: list[float], last: list[float], seconds: float, **extra: Any) -> dict:
    """A table row as bench weighting writes it, seeds 0.. unless given."""
    seeds = extra.pop("seeds", list(range(len(best))))
    return {
        "method": method,
        "aux_set": aux_set,
        "mean": fmean(best),
        "std": pstdev(best),
        "final_mean": fmean(last),
        "final_std": pstdev(last),
        "accuracies": best,
        "final_accuracies": last,
        "seeds": seeds,
        "seconds": seconds,
        "compute": seconds * len(best),
        "final_weights": {},
        **extra,
    }


def _meta(sets: list[str]) -> dict[str, Any]:
    return {
        "title": "t",
        "sets": sets,
        "aux_tasks": {},
        "complete": [],
        "incomplete": [],
        "commands": [],
        "command": "python jobs/weighting.py",
        "seeds": [0, 1, 2],
        "epochs": 30,
        "config_dirs": {},
        "machine": {},
    }


def test_a_margin_over_the_twin_counts_only_the_seeds_both_have_and_time_is_per_run() -> None:
    """The twin has 5 seeds and the method 3: the twin's extra seeds (far lower here) stay out of the margin, and the
    time ratio compares a run with a run, not 3 runs' total with 5's."""
    equal = _row("equal", "side_labels", [0.60, 0.61, 0.62, 0.40, 0.40], [0.60] * 5, 100.0)
    arml = _row("arml", "side_labels", [0.61, 0.62, 0.63], [0.62] * 3, 150.0, twin="equal")
    page = render_markdown([equal, arml], _meta(["side_labels"]))
    assert "| arml | equal | +1.0 | +2.0 | 1.50 |" in page
    assert "Δ twin +1.0 / +2.0" in render_summary([equal, arml])


def test_the_summary_has_a_row_per_method_and_a_column_per_set() -> None:
    """A method missing from a set is "–" there; a row first seen in a later set follows the row it follows there
    (equal_helpful_subset after equal); a row with another seed count than most of its set's says how many."""
    rows = [
        _row("stl", "helpful", [0.58, 0.59, 0.60], [0.60] * 3, 10.0),
        _row("equal", "helpful", [0.60, 0.61, 0.62], [0.62] * 3, 100.0),
        _row("arml", "helpful", [0.62, 0.62, 0.62], [0.63] * 3, 130.0, twin="equal"),
        _row("stl", "harmful", [0.58, 0.59, 0.60], [0.60] * 3, 10.0),
        _row("equal", "harmful", [0.55, 0.55, 0.55, 0.55, 0.55], [0.56] * 5, 100.0),
        _row("equal_helpful_subset", "harmful", [0.60, 0.61, 0.62], [0.62] * 3, 100.0),
        _row("arml", "harmful", [0.57, 0.57, 0.57], [0.57] * 3, 130.0, twin="equal"),
    ]
    lines = render_summary(rows).splitlines()
    assert lines[2] == "| method | fixed twin | helpful | harmful |"
    body = {line.split(" | ")[0].removeprefix("| "): line for line in lines[4:]}
    assert list(body) == ["stl", "equal", "equal_helpful_subset", "arml"]
    assert body["equal_helpful_subset"] == "| equal_helpful_subset |  | – | 61.0 ± 0.8 / 62.0 ± 0.0 |"
    assert body["equal"].endswith("| 55.0 ± 0.0 / 56.0 ± 0.0 (5 seeds) |")
    assert body["arml"] == (
        "| arml | equal | 62.0 ± 0.0 / 63.0 ± 0.0; Δ twin +1.0 / +1.0 | 57.0 ± 0.0 / 57.0 ± 0.0; Δ twin +2.0 / +1.0 |"
    )
