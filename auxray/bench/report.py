"""Render benchmark JSON under benchmarks/results/ into the README's marked sections, so every figure
in the README is copied from a run's output, next to the command that made it.

    python -m auxray.bench.report            # rewrite README.md between <!-- bench:NAME --> markers
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

RESULTS = Path("benchmarks/results")


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_hypergrad(data: dict[str, Any]) -> str:
    """One table per backbone: seconds, ratio to a plain training step, peak memory; and how much faster
    auxray's Neumann is than the naive re-differentiating baseline at the same K."""
    parts = []
    for res in data["backbones"]:
        rows = [[r["method"], r.get("k", "–"), r.get("hvp", "–"), r["seconds"], r.get("ratio_to_plain_step"),
                 r.get("peak_mem_mb")] for r in res["results"]]
        step = res["plain_step"]
        naive = {r.get("k"): r["seconds"] for r in res["results"] if r["method"] == "naive_neumann"}
        ours = {r.get("k"): r["seconds"] for r in res["results"]
                if r["method"] == "neumann" and r.get("hvp") == data.get("hvp_auto", "revrev")}
        speedups = ", ".join(f"K={k}: {_fmt(naive[k] / ours[k])}×" for k in sorted(ours) if k in naive)
        parts.append(f"**{res['backbone']}** ({res['n_params']} parameters, batch {res['batch_size']}; plain "
                     f"training step {_fmt(step['seconds'])} s, {_fmt(step.get('peak_mem_mb'))} MB; auxray's "
                     f"Neumann vs the naive reverse-over-reverse baseline: {speedups or '–'})\n\n"
                     + _table(["method", "K", "HVP", "seconds", "× plain step", "peak MB"], rows))
    return f"Device {data['device']}, torch {data['torch']}, {data['threads']} threads; memory: " \
           f"{data['memory_metric']}.\n\n" + "\n\n".join(parts)


def render_distributed(data: dict[str, Any]) -> str:
    rows = [[r["mode"], r["workers"], r["steps_per_second"], r["outer_step_seconds"],
             r["outer_step_allreduce_bytes"], r["phi_round_trip_bytes"]] for r in data["ray"]]
    single = data["single_process"]
    head = (f"Single process: {_fmt(single['steps_per_second'])} steps/s; 1-worker Ray Train: "
            f"{_fmt(data['ray_1worker_over_single_steps_per_second'])} × that rate "
            f"(device {data['device']}, {data['config']['primary_params']} primary parameters, "
            f"{data['config']['phi_params']} aux-net parameters).\n\n")
    return head + _table(["mode", "workers", "steps/s", "s per outer step", "all-reduced bytes per outer step",
                          "phi round-trip bytes"], rows)


def render_sweep(data: dict[str, Any]) -> str:
    rows = [[name, r.get("best_val_accuracy"), r.get("best_test_accuracy"), r.get("trial_epochs"),
             r.get("budget_epochs"), r.get("stopped_early"), r.get("seconds")]
            for name, r in data["strategies"].items()]
    head = (f"Sweep `{data['sweep']}`: {data['trials']} trials per strategy, {data['concurrency']} at a time, "
            f"{data['epochs_per_trial']} epochs per trial, over {', '.join(data['space'])}.\n\n")
    return head + _table(["strategy", "best val accuracy", "its test accuracy", "trial-epochs spent",
                          "trial-epoch budget", "stopped early", "seconds"], rows)


def render_reproduce(data: list[dict[str, Any]]) -> str:
    """Measured mean ± std per method beside the paper's number (where the paper has one)."""
    def pct(mean: float, std: float) -> str:
        return f"{100 * mean:.1f} ± {100 * std:.1f}"

    rows = [[r["method"], pct(r["paper"]["mean"], r["paper"]["std"]) if r.get("paper") else "–",
             pct(r["mean"], r["std"]), ", ".join(f"{100 * a:.1f}" for a in r["accuracies"]), r["seconds"],
             r.get("relative_time")] for r in data]
    return _table(["method", "paper %", "auxray test accuracy % (mean ± std)", "per seed", "seconds per run",
                   "time × STL"], rows)


RENDERERS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "hypergrad": ("bench_hypergrad_cpu.json", render_hypergrad),
    "distributed": ("bench_distributed_cpu.json", render_distributed),
    "sweep": ("bench_sweep_cpu.json", render_sweep),
    "reproduce": ("reproduce_cifar10_5pct_convnet4.json", render_reproduce),
}


def update_readme(readme: Path = Path("README.md"), results: Path = RESULTS) -> list[str]:
    """Replace each marked section whose JSON exists; returns the names updated."""
    text = readme.read_text()
    done = []
    for name, (filename, render) in RENDERERS.items():
        path = results / filename
        pattern = re.compile(rf"(<!-- bench:{name} -->\n)(?:.*?\n)?(<!-- /bench:{name} -->)", re.S)
        if path.is_file() and pattern.search(text):
            body = render(json.loads(path.read_text()))
            text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
            done.append(name)
    readme.write_text(text)
    return done


if __name__ == "__main__":
    print("updated:", ", ".join(update_readme()) or "nothing", file=sys.stderr)
