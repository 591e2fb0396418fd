"""The sweep benchmark on a page: its markdown table (mean ± spread over search seeds per strategy) and a plot of
the best validation accuracy each search had found against the trial-epochs it had spent."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pm(stat: dict[str, Any], digits: int = 3) -> str:
    """`mean ± std` of a statistic over seeds, or a dash."""
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _gpu_share(data: dict[str, Any]) -> str:
    """` and 0.25 GPU` when the trials asked for GPUs, else nothing."""
    gpus = data.get("gpus_per_trial") or 0
    return f" and {gpus:g} GPU" if gpus else ""


def render_sweep(data: dict[str, Any]) -> str:
    """One row per strategy over its search seeds, and the driver's memory and the store's size at the end."""
    budget = data["trials"] * data["epochs_per_trial"]
    lines = [
        f"Sweep `{data['sweep']}`: {data['trials']} trials per search, {data['concurrency']} at a time on "
        f"{data['cpus_per_trial']} CPU{_gpu_share(data)} each, {data['epochs_per_trial']} epochs per trial "
        f"(budget {budget} trial-epochs), over {', '.join(data['space'])}; each strategy on search seeds "
        f"{', '.join(str(s) for s in data['search_seeds'])} (mean ± standard deviation over seeds).",
        "",
        "| strategy | best val accuracy | its test accuracy | trial-epochs spent | seconds | trials per hour "
        "| errored trials |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, s in data["summary"].items():
        lines.append(
            f"| {label} | {_pm(s['best_val_accuracy'])} | {_pm(s['best_test_accuracy'])} "
            f"| {_pm(s['trial_epochs'], 0)} | {_pm(s['seconds'], 0)} | {_pm(s['trials_per_hour'], 0)} "
            f"| {_pm(s['errored'], 1)} |"
        )
    runs = data["runs"]
    exploits = [r["exploits"] for r in runs if r.get("exploits") is not None]
    if exploits:
        lines += [
            "",
            f"PBT trials copied a better trial's checkpoint {', '.join(map(str, exploits))} times (per seed).",
        ]
    if runs:
        last = runs[-1]
        peak = max(r["driver"]["peak_rss_mb"] for r in runs)
        store = f"{last['store_mb']:.1f} MiB" if last["store_mb"] is not None else "on the server"
        lines += [
            "",
            f"{len(runs)} sweeps, {sum(r['trials'] for r in runs)} trials in all, one driver process: its resident "
            f"memory was {last['driver']['rss_mb']:.0f} MiB at the end (peak {peak:.0f} MiB); the MLflow store "
            f"(SQLite and artifacts) held {store} after the last sweep.",
        ]
    return "\n".join(lines)


def plot_search_progress(data: dict[str, Any], path: Path) -> Path:
    """Best validation accuracy found against trial-epochs spent: one line per search, a colour per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = dict(zip(data["summary"], plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for run in data["runs"]:
        if not run["curve"]:
            continue
        xs, ys = zip(*run["curve"], strict=True)
        label = run["strategy"] if run["seed"] == data["search_seeds"][0] else None
        ax.step(xs, ys, where="post", color=colours[run["strategy"]], alpha=0.8, label=label)
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel("best validation accuracy found")
    ax.set_title(f"{data['sweep']}: {data['trials']} trials per search, one line per search seed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
