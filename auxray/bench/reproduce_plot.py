"""The reproduction table as a picture (PNG, matplotlib's Agg backend): test accuracy per method with its
seeds and the paper's number beside it, and each method's wall time relative to STL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from auxray.bench.table import is_baseline
from auxray.tracking.plots import save_figure  # also selects matplotlib's Agg backend

PANELS_PER_ROW = 4


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
    stl = next((row for row in table if is_baseline(row["method"])), None)
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


def plot_task_weights(runs: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path | None:
    """The learned weight of every auxiliary task over training: one panel per method that learns weights, one
    line per task (the mean over seeds, the band their range), from each run's per-epoch task_weight_history.
    None when no run learned weights."""
    histories: dict[str, list[dict[str, list[float]]]] = {}
    for run in runs:
        history = run.get("diagnostics", {}).get("task_weight_history")
        if history:
            histories.setdefault(run["method"], []).append(history)
    if not histories:
        return None
    # At most PANELS_PER_ROW panels a row, so a table of many methods stays readable on a page.
    cols = min(len(histories), PANELS_PER_ROW)
    rows = -(-len(histories) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    panels = list(grid.flat)
    for spare in panels[len(histories) :]:
        spare.set_visible(False)
    # One colour per task in every panel (panels may hold different task sets), and one legend of them all.
    tasks = sorted({task for seeds in histories.values() for task in seeds[0]})
    colour = {task: f"C{i % 10}" for i, task in enumerate(tasks)}
    for ax, (method, seeds) in zip(panels, histories.items()):
        for task in sorted(seeds[0]):
            curves = [[float("nan") if v is None else v for v in h[task]] for h in seeds if task in h]
            epochs = range(1, min(len(c) for c in curves) + 1)
            columns = [[c[e - 1] for c in curves] for e in epochs]
            mean = [sum(col) / len(col) for col in columns]
            ax.plot(list(epochs), mean, label=task, color=colour[task])
            ax.fill_between(
                list(epochs), [min(c) for c in columns], [max(c) for c in columns], alpha=0.2, color=colour[task]
            )
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for row in grid:
        row[0].set_ylabel("task weight (learned or merged)")
    handles = [plt.Line2D([], [], color=colour[task], label=task) for task in tasks]
    panels[len(histories) - 1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(path))
