"""Pictures of a run (PNG, matplotlib's Agg backend): learned task weights, hypergradient norms, and which
learned sub-class each class's images went to. Each function returns None when the run has no such data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from auxray.train.session import RunView  # noqa: E402

TASK_WEIGHT_PREFIX = "task_weight/"


def save_figure(fig: Any, path: Path) -> Path:
    """Write a figure as PNG (creating its folder) and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_task_weights(view: RunView, out_dir: str | Path) -> Path | None:
    """Each auxiliary task's learned weight per epoch (from the run's history)."""
    names = sorted({k for row in view.history for k in row if k.startswith(TASK_WEIGHT_PREFIX)})
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name in names:
        rows = [row for row in view.history if name in row]
        ax.plot(
            [row["epoch"] for row in rows],
            [row[name] for row in rows],
            marker="o",
            ms=3,
            label=name[len(TASK_WEIGHT_PREFIX) :],
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean task weight")
    ax.set_title(f"Learned task weights ({view.method})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, Path(out_dir) / "task_weights.png")


def plot_hypergrad_norms(view: RunView, out_dir: str | Path) -> Path | None:
    """Norm of each outer step's hypergradient against the inner step it was taken at."""
    if not view.hypergrad_norms:
        return None
    steps, values = zip(*view.hypergrad_norms)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps, values, lw=1, marker="." if len(steps) < 200 else None)
    if min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("inner step")
    ax.set_ylabel("||hypergradient||")
    ax.set_title("Hypergradient norm per outer step")
    ax.grid(alpha=0.3)
    return save_figure(fig, Path(out_dir) / "hypergrad_norms.png")


def plot_label_assignment(view: RunView, out_dir: str | Path) -> Path | None:
    """Heat map of the label generator's sub-class counts: classes as rows, each class's block of sub-classes as
    columns, cells the share of the class's images given that sub-class (counts written in each class's block)."""
    labels = view.labels()
    if labels is None:
        return None
    counts, psi = labels.counts().float(), labels.psi
    if counts.sum() == 0:
        return None
    classes = view.classes if len(view.classes) == len(psi) else [str(c) for c in range(len(psi))]
    share = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    k = sum(psi)
    fig, ax = plt.subplots(figsize=(min(16, 2 + 0.32 * k), 1.2 + 0.42 * len(psi)))
    im = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    edges = [sum(psi[:c]) for c in range(len(psi) + 1)]
    for e in edges[1:-1]:
        ax.axvline(e - 0.5, color="0.6", lw=0.6)
    ax.set_xticks([(edges[c] + edges[c + 1] - 1) / 2 for c in range(len(psi))])
    ax.set_xticklabels(classes, rotation=30 if len(psi) > 12 else 0, fontsize=8)
    ax.set_yticks(range(len(psi)))
    ax.set_yticklabels(classes, fontsize=8)
    ax.set_xlabel("learned sub-class (grouped by the class that owns it)")
    ax.set_ylabel("true class")
    if k <= 60:
        for c in range(len(psi)):
            for j in range(edges[c], edges[c + 1]):
                value = int(counts[c, j])
                ax.text(
                    j,
                    c,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if share[c, j] > 0.55 else "0.2",
                )
    ax.set_title(f"Learned auxiliary labels: sub-class of each image (n={int(counts.sum())})")
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01, label="share of the class")
    return save_figure(fig, Path(out_dir) / "label_assignment.png")


def write_plots(view: RunView, out_dir: str | Path) -> list[Path]:
    """Every plot the run has data for."""
    made = [plot_task_weights(view, out_dir), plot_hypergrad_norms(view, out_dir), plot_label_assignment(view, out_dir)]
    return [p for p in made if p is not None]
