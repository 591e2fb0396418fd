"""The weighting table's Markdown page and pictures: per auxiliary set the rows (best-on-validation and last-epoch
test accuracy side by side, compute), each learned method beside its fixed twin with the difference, the final task
weights, the commands and settings; the learned weights over training and test accuracy against compute (PNG)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _acc(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{_pct(mean)} ± {_pct(std)}"


def _margin(row: dict[str, Any], twin: dict[str, Any], key: str) -> str:
    """row − twin in points over the seeds both have (paired: a seed is the same start and data order for both), for
    key "accuracies" (best-on-validation) or "final_accuracies" (last epoch); "–" without a shared seed."""
    theirs = dict(zip(twin["seeds"], twin[key]))
    pairs = [(a, theirs[s]) for s, a in zip(row["seeds"], row[key]) if s in theirs]
    return f"{100 * fmean(a - b for a, b in pairs):+.1f}" if pairs else "–"


def _weights(w: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in w.items()) or "–"


def _method_order(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every method once, each set's rows keeping their order: a method first seen in a later set goes right after the
    row it follows there (equal_helpful_subset after equal)."""
    order: list[str] = []
    for aux_set in dict.fromkeys(r["aux_set"] for r in rows):
        previous = None
        for method in (r["method"] for r in rows if r["aux_set"] == aux_set):
            if method not in order:
                order.insert(order.index(previous) + 1 if previous is not None else 0, method)
            previous = method
    return order


def render_summary(rows: Sequence[dict[str, Any]]) -> str:
    """The README's view of the table: a row per method, a column per auxiliary set; each cell best-on-validation /
    last-epoch accuracy (mean ± std) and, for a learned or forking method, its margin over its fixed twin on both
    selections, with the seed count where a row has another than most of its set's."""
    sets = list(dict.fromkeys(r["aux_set"] for r in rows))
    by_key = {(r["aux_set"], r["method"]): r for r in rows}
    usual = {s: Counter(len(r["seeds"]) for r in rows if r["aux_set"] == s).most_common(1)[0][0] for s in sets}
    twins = {r["method"]: r["twin"] for r in rows if r.get("twin")}
    lines = [
        "Test accuracy (%), best-on-validation / last epoch, mean ± std over seeds; Δ twin: the method's margin over "
        "its fixed twin (the same start, nothing learned) on the seeds both have, best-on-validation / last epoch, in "
        "points.",
        "",
        f"| method | fixed twin | {' | '.join(sets)} |",
        f"|---|---|{'---|' * len(sets)}",
    ]
    for method in _method_order(rows):
        cells = []
        for aux_set in sets:
            r = by_key.get((aux_set, method))
            if r is None:
                cells.append("–")
                continue
            cell = f"{_acc(r['mean'], r['std'])} / {_acc(r['final_mean'], r['final_std'])}"
            twin = by_key.get((aux_set, r.get("twin", "")))
            if twin is not None:
                cell += f"; Δ twin {_margin(r, twin, 'accuracies')} / {_margin(r, twin, 'final_accuracies')}"
            if len(r["seeds"]) != usual[aux_set]:
                cell += f" ({len(r['seeds'])} seeds)"
            cells.append(cell)
        lines.append(f"| {method} | {twins.get(method, '')} | {' | '.join(cells)} |")
    return "\n".join(lines)


def render_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The page: per set, the rows, then each learned method against its twin; the status, command and settings."""
    lines = [
        f"# Weighting table: {meta['title']}",
        "",
        "Test accuracy (%) of the best-on-validation weights and of the last epoch's, mean ± std over seeds "
        "(population std); compute: total wall seconds of the runs behind a row (every seed; for weight_search "
        "every trial of the search too); final weights: each task's weight after the last epoch, mean over seeds. "
        "weight_search is the best trial of a search over equal's fixed weights (chosen on validation), its weights "
        "trained again on the table's seeds.",
        "",
    ]
    for aux_set in meta["sets"]:
        mine = [r for r in rows if r["aux_set"] == aux_set]
        lines += [f"## Aux set: {aux_set} ({meta['aux_tasks'].get(aux_set, '')})", ""]
        if not mine:
            lines += ["No finished runs yet.", ""]
            continue
        lines += [
            "| method | best-on-val | last epoch | seeds | compute (h) | final weights |",
            "|---|---|---|---|---|---|",
        ]
        for r in mine:
            seeds = ",".join(map(str, r["seeds"])) or "–"
            lines.append(
                f"| {r['method']} | {_acc(r['mean'], r['std'])} | {_acc(r['final_mean'], r['final_std'])} | "
                f"{seeds} | {r['compute'] / 3600:.3g} | {_weights(r['final_weights'])} |"
            )
        by_name = {r["method"]: r for r in mine}
        pairs = [(r, by_name.get(r["twin"])) for r in mine if r.get("twin")]
        if pairs:
            lines += [
                "",
                "Each learned (or forking) method beside its fixed twin (the same inner work, nothing learned): the "
                "margins over the seeds both have, the time of a run against the twin's (mean seconds per run):",
                "",
                "| method | twin | best-on-val: method − twin | last epoch: method − twin | time × twin |",
                "|---|---|---|---|---|",
            ]
            for r, t in pairs:
                ratio = f"{r['seconds'] / t['seconds']:.2f}" if t and t["seconds"] > 0 else "–"
                best = _margin(r, t, "accuracies") if t else "–"
                last = _margin(r, t, "final_accuracies") if t else "–"
                lines.append(f"| {r['method']} | {r['twin']} | {best} | {last} | {ratio} |")
        lines.append("")
    for key, title in (
        ("weights_picture", "Learned task weights over training"),
        ("compute_picture", "Accuracy against compute"),
    ):
        if meta.get(key):
            lines += [f"![{title}]({meta[key]})", ""]
    lines += ["## Status", ""]
    lines += [f"- complete: {', '.join(meta['complete']) or 'none'}"]
    lines += [f"- incomplete: {'; '.join(meta['incomplete']) or 'none'}", ""]
    lines += ["## Commands and settings", "", "The runs shown were trained by, in the order they first finished:", ""]
    lines += ["```", *meta["commands"], "```", "", "This page was written by:", "", "```", meta["command"], "```", ""]
    lines += [
        f"Seeds {', '.join(map(str, meta['seeds']))}; {meta['epochs']} epochs; config folders: "
        + ", ".join(f"{s}: {d}" for s, d in meta["config_dirs"].items())
        + ". Fixed twins: a frozen one is its method's config with `hypergrad.enabled: false`; another is that "
        "method's config of the same folder. Machine: "
        + ", ".join(f"{k} {v}" for k, v in meta["machine"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def plot_compute(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path | None:
    """Test accuracy (mean ± std, %) against compute (hours) per row, one colour per aux-task set; None without rows."""
    import matplotlib.pyplot as plt

    from auxray.tracking.plots import save_figure  # also selects matplotlib's Agg backend

    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, aux_set in enumerate(dict.fromkeys(r["aux_set"] for r in rows)):
        mine = [r for r in rows if r["aux_set"] == aux_set]
        xs, ys = [r["compute"] / 3600 for r in mine], [100 * r["mean"] for r in mine]
        ax.errorbar(xs, ys, yerr=[100 * r["std"] for r in mine], fmt="o", color=f"C{i}", capsize=2, label=aux_set)
        for x, y, r in zip(xs, ys, mine):
            ax.annotate(r["method"], (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    spent = [r["compute"] for r in rows if r["compute"] > 0]
    if spent and max(spent) > 10 * min(spent):  # a search or a forking method beside single runs
        ax.set_xscale("log")
    ax.set_xlabel("compute: total wall hours of the runs behind the row")
    ax.set_ylabel("test accuracy (%), best on validation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def plot_weights(runs_by_set: dict[str, list[dict[str, Any]]], path: str | Path, title: str) -> Path | None:
    """Every learned method's task weights over training (bench.reproduce_plot.plot_task_weights), a panel per
    (method, aux-task set)."""
    from auxray.bench.reproduce_plot import plot_task_weights

    runs = [dict(r, method=f"{r['method']} ({s})") for s, rs in runs_by_set.items() for r in rs]
    return plot_task_weights(runs, path, title)
