"""The reproduction's table: finished runs aggregated into one row per method (mean and standard deviation over
seeds, wall time relative to STL, the paper's number), and the Markdown page that sets it beside the paper with
the settings, diagnostics, command, machine and data.

Standard deviations are population standard deviations over seeds (``ddof=0``, numpy's default), so one seed
gives 0 rather than an undefined value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from auxray.method_specs import SPECS

STD_DDOF = 0

# The published numbers (AuxiLearn's CIFAR-10 5% table) of the methods that have one, by method name.
PAPER = {s.name: s.paper for s in SPECS.values() if s.paper is not None}


def is_baseline(method: str) -> bool:
    """Whether a table row (a method or a config variant's name) is the single-task baseline."""
    return method in SPECS and SPECS[method].baseline


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation (ddof STD_DDOF: the population's) of a table's values over seeds."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - STD_DDOF, 1)
    return mean, math.sqrt(var)


def build_table(runs: Iterable[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method with at least one finished run: test accuracies (fractions) of the best-on-validation
    weights and of the last epoch's, each with its mean/std over seeds (model selection on a 250-image validation
    split moves a mean by up to 1.7 points, so a gain counts only where it holds on both), mean wall seconds per
    run and that time relative to STL's."""
    by_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for r in runs:
        if r["method"] in by_method:
            by_method[r["method"]].append(r)
    table: list[dict[str, Any]] = []
    for m in methods:
        rs = sorted(by_method[m], key=lambda r: r["seed"])
        if not rs:
            continue
        accs = [float(r["test_accuracy"]) for r in rs]
        mean, std = mean_std(accs)
        finals = [float(r["final_test_accuracy"]) for r in rs]
        final_mean, final_std = mean_std(finals)
        table.append(
            {
                "method": m,
                "mean": mean,
                "std": std,
                "accuracies": accs,
                "final_mean": final_mean,
                "final_std": final_std,
                "final_accuracies": finals,
                "seeds": [r["seed"] for r in rs],
                "seconds": sum(float(r["seconds"]) for r in rs) / len(rs),
                "relative_time": None,
                "std_ddof": STD_DDOF,
                "paper": ({"mean": PAPER[m].mean / 100, "std": PAPER[m].std / 100} if m in PAPER else None),
            }
        )
    stl = next((row for row in table if is_baseline(row["method"])), None)
    for row in table:
        row["relative_time"] = row["seconds"] / stl["seconds"] if stl and stl["seconds"] > 0 else None
    return table


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _settings_text(settings: dict[str, Any]) -> str:
    if not settings:
        return "main loss only"
    return ", ".join(
        f"{k}={json.dumps(v) if isinstance(v, (list, bool)) or v is None else v}" for k, v in settings.items()
    )


def _diag_text(method: str, diags: list[dict[str, Any]]) -> str:
    """One cell summarising the per-run diagnostics of a method (means over its runs)."""
    diags = [d for d in diags if d]
    if not diags:
        return "–"

    def avg(values: list[float]) -> float:
        return sum(values) / len(values)

    parts = []
    hg = [d["hypergrad_norm"] for d in diags if "hypergrad_norm" in d]
    if hg:
        first, last = avg([h["first"] for h in hg]), avg([h["last"] for h in hg])
        parts.append(
            f"hypergrad norm first {first:.3g} → last {last:.3g} (min {min(h['min'] for h in hg):.3g}, "
            f"{avg([h['count'] for h in hg]):.0f} outer steps/run)"
        )
    weights = sorted({k for d in diags for k in d if k.startswith("task_weight/")})
    for k in weights:
        parts.append(f"{k.split('/', 1)[1]} weight {avg([d[k] for d in diags if k in d]):.3g}")
    cos = sorted({k for d in diags for k in d if k.startswith("grad_cosine/")})
    for k in cos:
        parts.append(f"cos(main, {k.split('/', 1)[1]}) {avg([d[k] for d in diags if k in d]):.2f}")
    lab = [d["labels"] for d in diags if "labels" in d]
    if lab:
        parts.append(
            f"labels: sample entropy {avg([x['sample_entropy'] for x in lab]):.2f}, usage entropy "
            f"{avg([x['usage_entropy'] for x in lab]):.2f}, sub-classes used "
            f"{100 * avg([x['subclasses_used'] for x in lab]):.0f}%"
        )
    return "; ".join(parts) or "–"


def render_markdown(table: list[dict[str, Any]], runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The table beside the paper's numbers, then settings, diagnostics, command, machine and data."""
    lines = [f"# Reproduction: CIFAR-10 with 5% labels ({meta['tag']})", ""]
    if meta["quick"]:
        lines += [
            "**Quick mode**: 1 seed, 1 epoch, a 400-image labelled slice and 1,000 test images. It checks that "
            "every method runs end to end; its accuracies say nothing about the methods.",
            "",
        ]
    paper_line = ", ".join(f"{p.label} {p.mean:.1f} ± {p.std:.1f}" for p in PAPER.values())
    lines += [
        "Test accuracy (%) of the best-on-validation weights, mean ± std over seeds "
        f"(std: population, ddof={STD_DDOF}), and of the last epoch's weights (last epoch).",
        "",
        f"Paper (AuxiLearn, Navon et al., ICLR 2021, CIFAR-10 with 5% labels): {paper_line}; the other methods "
        "have no number there (–). The paper used its own backbone and schedule, so compare the ordering and "
        "the gaps, not the absolute level.",
        "",
        "| method | paper | auxray | per seed | last epoch | seconds / run | × STL time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table:
        p = PAPER.get(row["method"])
        paper = f"{p.mean:.1f} ± {p.std:.1f}" if p else "–"
        name = row["method"] + (f" ({p.label})" if p else "")
        per_seed = ", ".join(f"{100 * a:.1f}" for a in row["accuracies"])
        rel = f"{row['relative_time']:.2f}" if row["relative_time"] is not None else "–"
        lines.append(
            f"| {name} | {paper} | {_pct(row['mean'])} ± {_pct(row['std'])} | {per_seed} | "
            f"{_pct(row['final_mean'])} ± {_pct(row['final_std'])} | {row['seconds']:.1f} | {rel} |"
        )
    if meta.get("picture"):
        lines += ["", f"![test accuracy and relative wall time per method]({meta['picture']})"]
    if meta.get("weights_picture"):
        lines += ["", f"![learned weight of every auxiliary task over training]({meta['weights_picture']})"]
    lines += [
        "",
        "## Settings",
        "",
        f"- Command: `{meta['command']}`",
        f"- Backbone: {meta['backbone']} (width {meta['width']}); epochs: {meta['epochs']} for every method; "
        f"seeds: {', '.join(str(s) for s in meta['seeds'])}",
        f"- Shared by every method (data bar the seed, model, trainer bar the seed): "
        f"`{json.dumps(meta['shared']['trainer'], default=str)}`",
        f"- Data: {meta['data_note']}",
        f"- Machine: {meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs "
        f"({meta['machine']['usable_cpus']} usable, torch threads per run "
        f"{meta.get('threads_per_job') or meta['machine']['torch_threads']}), "
        f"Python {meta['machine']['python']}, torch {meta['machine']['torch']}, device "
        f"{meta['machine']['device']}{' (' + meta['machine']['gpu'] + ')' if meta['machine'].get('gpu') else ''}",
        f"- Wall time of this invocation: {meta['wall_seconds']:.1f} s ({meta['ran']} runs trained, "
        f"{meta['skipped']} reused from `{meta['runs_file']}`)"
        + (
            f"; rows of {', '.join(meta['carried'])} come from earlier invocations with the same settings (same file)"
            if meta.get("carried")
            else ""
        ),
        (
            f"- Runs trained {meta['jobs']} at a time as Ray Tune trials, each in its own process with "
            f"{meta['threads_per_job']} "
            "torch thread(s), so a run's seconds are those of a machine shared with the other run(s)"
            if meta.get("jobs", 1) > 1
            else "- Runs trained one at a time as Ray Tune trials"
        ),
        "",
        "Per-method settings (from each resolved config, method.* and hypergrad.*):",
        "",
        "| method | settings |",
        "|---|---|",
    ]
    for row in table:
        lines.append(f"| {row['method']} | {_settings_text(meta['settings'].get(row['method'], {}))} |")
    lines += [
        "",
        "## Diagnostics (after the last epoch, mean over seeds)",
        "",
        "Hypergradient norms of learned methods; learned task weights (mean over the last epoch); the cosine "
        "between main and auxiliary gradients on the trunk; for label generators, how spread the generated "
        "labels are (entropies normalised by log psi: 0 = one sub-class, 1 = uniform; usage entropy near 0 "
        "means the labels collapsed).",
        "",
        "| method | diagnostics |",
        "|---|---|",
    ]
    for row in table:
        diags = [r.get("diagnostics", {}) for r in runs if r["method"] == row["method"]]
        lines.append(f"| {row['method']} | {_diag_text(row['method'], diags)} |")
    return "\n".join(lines) + "\n"


def data_note(cfg: Any, sizes: dict[str, int] | None) -> str:
    d = cfg.data
    source = Path(d.root).name
    official = source.startswith("cifar-10-batches")
    kind = (
        "CIFAR-10 re-encoded as a JPEG ImageFolder tree"
        if d.dataset == "cifar10" and not official
        else f"{d.dataset} from {source}"
    )
    if d.labeled_fraction is not None:
        labelled = f"{d.labeled_fraction:.0%} of the training labels"
    else:
        labelled = f"{d.labeled_per_class} labelled images per class"
    note = (
        f"{kind} (`{d.root}`); {labelled}, of which {d.outer_fraction:.0%} are held out as the outer "
        f"set and {d.val_fraction:.0%} for validation / model selection, stratified and seeded by data.seed; "
        f"augmentation {'on' if d.augment else 'off'}"
    )
    if sizes:
        labelled_n = sizes["train"] + sizes["outer"] + sizes["val"]
        note += (
            f". Sizes: {labelled_n:,} labelled = {sizes['train']:,} train + {sizes['outer']:,} outer + "
            f"{sizes['val']:,} val; test {sizes['test']:,} images"
        )
        note += " (the full CIFAR-10 test set)" if sizes["test"] == 10000 else f" (data.test_limit={d.test_limit})"
    return note
