"""The reproduction table as a picture (PNG, matplotlib's Agg backend): test accuracy per method with its
seeds and the paper's number beside it, and each method's wall time relative to STL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from auxray.tracking.plots import save_figure  # also selects matplotlib's Agg backend


def plot_reproduce(table: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path | None:
    """Left: mean ± std test accuracy (%) per method, one dot per seed, the paper's mean ± std as a hollow
    marker and STL's mean as a dashed line. Right: seconds per run relative to STL. None for an empty table."""
    if not table:
        return None
    names = [row["method"] for row in table]
    ys = range(len(names))[::-1]
    fig, (acc_ax, time_ax) = plt.subplots(
        1, 2, figsize=(10, 0.45 * len(names) + 1.6), gridspec_kw={"width_ratios": [3, 1.4]}, sharey=True
    )
    paper_labelled = False
    for y, row in zip(ys, table):
        acc_ax.errorbar(
            100 * row["mean"],
            y,
            xerr=100 * row["std"],
            fmt="o",
            color="tab:blue",
            capsize=3,
            label="auxray (mean ± std)" if y == ys[0] else None,
        )
        acc_ax.scatter(
            [100 * a for a in row["accuracies"]],
            [y] * len(row["accuracies"]),
            s=10,
            color="tab:blue",
            alpha=0.4,
            zorder=3,
        )
        paper = row.get("paper")
        if paper:
            acc_ax.errorbar(
                100 * paper["mean"],
                y - 0.25,
                xerr=100 * paper["std"],
                fmt="o",
                mfc="white",
                color="tab:orange",
                capsize=3,
                label=None if paper_labelled else "paper (its backbone)",
            )
            paper_labelled = True
    stl = next((row for row in table if row["method"] == "stl"), None)
    if stl:
        acc_ax.axvline(100 * stl["mean"], color="grey", ls="--", lw=1, label="auxray STL mean")
    acc_ax.set_yticks(list(ys), names)
    acc_ax.set_xlabel("test accuracy (%)")
    acc_ax.grid(axis="x", alpha=0.3)
    acc_ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8, frameon=False)
    rel = [row.get("relative_time") or 0.0 for row in table]
    time_ax.barh(list(ys), rel, color="tab:grey")
    time_ax.axvline(1.0, color="black", lw=0.8)
    time_ax.set_xlabel("wall time × STL")
    for y, row, r in zip(ys, table, rel):
        time_ax.text(
            r, y, f" {r:.1f}×" if row.get("relative_time") is not None else " – (no STL run)", va="center", fontsize=8
        )
    time_ax.set_xlim(0, max(rel + [1.0]) * 1.25)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(path))
