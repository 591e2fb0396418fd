"""Sections of the cost benchmarks (hypergradient, distributed, trial cost, outer-step breakdown, overhead, sweep
faults) rendered from their JSON as Markdown; `auxray.bench.report` puts them into the pages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from auxray.bench.markdown import fmt, md_table


def render_hypergrad(data: dict[str, Any]) -> str:
    """One table per backbone: seconds, ratio to a plain training step, peak memory; and how much faster
    auxray's Neumann is than the naive re-differentiating baseline at the same K."""
    parts = []
    for res in data["backbones"]:
        rows = [
            [
                r["method"],
                r.get("k", "–"),
                r.get("hvp", "–"),
                r["seconds"],
                r.get("ratio_to_plain_step"),
                r.get("peak_mem_mb"),
            ]
            for r in res["results"]
        ]
        step = res["plain_step"]
        naive = {r.get("k"): r["seconds"] for r in res["results"] if r["method"] == "naive_neumann"}
        ours = {
            r.get("k"): r["seconds"]
            for r in res["results"]
            if r["method"] == "neumann" and r.get("hvp") == data.get("hvp_auto", "revrev")
        }
        speedups = ", ".join(f"K={k}: {fmt(naive[k] / ours[k])}×" for k in sorted(ours) if k in naive)
        parts.append(
            f"**{res['backbone']}** ({res['n_params']} parameters, batch {res['batch_size']}; plain "
            f"training step {fmt(step['seconds'])} s, {fmt(step.get('peak_mem_mb'))} MB; auxray's "
            f"Neumann vs the naive reverse-over-reverse baseline: {speedups or '–'})\n\n"
            + md_table(["method", "K", "HVP", "seconds", "× plain step", "peak MB"], rows)
        )
    return (
        f"Device {data['device']}, torch {data['torch']}, {data['threads']} threads; memory: "
        f"{data['memory_metric']}.\n\n" + "\n\n".join(parts)
    )


def render_distributed(data: dict[str, Any]) -> str:
    rows = [
        [
            r["mode"],
            r["workers"],
            r["steps_per_second"],
            r["outer_step_seconds"],
            r["outer_step_allreduce_bytes"],
            r["phi_round_trip_bytes"],
        ]
        for r in data["ray"]
    ]
    single = data["single_process"]
    head = (
        f"Single process: {fmt(single['steps_per_second'])} steps/s; 1-worker Ray Train: "
        f"{fmt(data['ray_1worker_over_single_steps_per_second'])} × that rate "
        f"(device {data['device']}, {data['config']['primary_params']} primary parameters, "
        f"{data['config']['phi_params']} aux-net parameters).\n\n"
    )
    return head + md_table(
        ["mode", "workers", "steps/s", "s per outer step", "all-reduced bytes per outer step", "phi round-trip bytes"],
        rows,
    )


START_PHASES = ("startup", "tracking", "setup")  # what the issue counts as a trial's fixed cost


def _trial_cost_shares(data: dict[str, Any]) -> str:
    """The 5-epoch trial's fixed share two ways: the start-up costs the target names (process and imports, child
    run, data and model), and everything but training (which adds validation, checkpoints and the final test)."""
    target = data["target"]
    demo = data["runs"]["5"]
    start = sum(demo["median"][k] for k in START_PHASES)
    share = start / demo["median"]["total"]
    fresh = [t for r in data["runs"].values() for t in r["per_trial"] if not t["reused_process"]]
    first = ""
    if fresh:
        first_start = sum(fresh[0][k] for k in START_PHASES)
        first_share = first_start / (demo["median"]["total"] - start + first_start)
        first = (
            f" The first trial of each process pays {first_start:.1f} s instead ({fresh[0]['startup']:.1f} s of it the "
            f"process's start and imports): {100 * first_share:.0f}% of a 5-epoch trial, once per process."
        )
    met = "met" if share <= target["fixed_share_of_5_epoch_trial"] else "not met"
    return (
        f"\n\nStart-up, child run and set-up in the median 5-epoch trial: {start:.2f} s, {100 * share:.1f}% of it "
        f"(target {100 * target['fixed_share_of_5_epoch_trial']:.0f}%: {met})."
        f"{first} Everything but training (adding per-epoch validation, checkpoints and the final test evaluation): "
        f"{100 * target['measured']:.1f}%."
    )


def render_trial_cost(data: dict[str, Any]) -> str:
    """Median seconds of each phase of a sweep trial per epoch budget, and the fixed share against the target."""
    rows = [
        [
            epochs,
            *(r["median"][k] for k in ("startup", "tracking", "setup", "train", "loop", "fixed", "total")),
            r["fixed_share_of_median"],
            r["first_trial_startup"],
            f"{r['trials_in_a_reused_process']} of {len(r['per_trial'])}",
        ]
        for epochs, r in data["runs"].items()
    ]
    target = data["target"]
    head = (
        f"`{Path(data['config']).name}` swept over {data['trials']} seeds per epoch budget, {data['concurrency']} "
        f"trial at a time; median seconds per trial (startup counts only in a process the trial started).\n\n"
    )
    tail = _trial_cost_shares(data) if target.get("measured") is not None else ""
    return (
        head
        + md_table(
            [
                "epochs",
                "startup",
                "tracking",
                "setup",
                "train",
                "loop",
                "fixed",
                "total",
                "fixed share",
                "first trial's startup",
                "trials in a reused process",
            ],
            rows,
        )
        + tail
    )


def _settings_cell(settings: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={json.dumps(v)}" if isinstance(v, bool) or v is None else f"{k}={v}" for k, v in settings.items()
    )


def _outer_steps_cell(counts: list[int]) -> str:
    return ", ".join(str(c) for c in sorted(set(counts)))


PHASES = (
    "inner_forward_backward",
    "outer_gradient",
    "graph_build",
    "hvp",
    "mixed_term",
    "direct_term",
    "optimizer",
    "communication",
)


def render_breakdown(data: dict[str, Any]) -> str:
    """Per method, one outer step's phases (median seconds) under each hypergradient variant."""
    m = data["machine"]
    parts = [
        f"One outer step, phase by phase: median seconds of {data['repeats']} steps after {data['warmup']} "
        f"warm-up; outer step = its total, the inner step it rides on included; × plain step = that over one "
        f"plain inner step; cosine = the variant's hypergradient against the full-cost one (all parameters, "
        f"whole batch), mean over the timed batches (device {m['device']}, torch {m['torch']}, "
        f"{m['torch_threads']} threads{', quick data' if data.get('quick') else ''})."
    ]
    header = [
        "variant",
        "plain step s",
        "outer step s",
        "× plain step",
        "inner fwd+bwd",
        "outer gradient",
        "graph build",
        "HVPs (count)",
        "mixed term",
        "direct term",
        "optimizer",
        "communication",
        "cosine to full",
    ]
    for method in data["methods"]:
        rows = []
        for v in method["variants"]:
            ph = v["phases"]
            cells = [fmt(ph[k]) for k in PHASES]
            cells[PHASES.index("hvp")] = f"{fmt(ph['hvp'])} ({ph['hvp_count']:.0f})"
            rows.append(
                [
                    v["variant"],
                    v["plain_step_seconds"],
                    ph["total"],
                    v["total_over_plain_step"],
                    *cells,
                    v["cosine_to_full"],
                ]
            )
        parts.append(f"**{method['method']}**\n\n" + md_table(header, rows))
    return "\n\n".join(parts)


def render_overhead(rows: list[dict[str, Any]], breakdown: dict[str, Any] | None = None) -> str:
    """Each learned method against its fixed-weight twin: time per inner step and accuracy; then, when the
    breakdown JSON exists, where an outer step's time goes."""
    seeds = sorted({s for r in rows for s in r["seeds"]})
    epochs = sorted({r["epochs"] for r in rows})
    head = (
        f"Wall time per inner step over whole runs (epoch times summed: outer steps included, evaluation "
        f"excluded), as a multiple of the twin's; test accuracy of the best-on-validation weights; means over "
        f"seeds {', '.join(map(str, seeds))}; epochs per run: {', '.join(map(str, epochs))}.\n\n"
    )
    table = md_table(
        [
            "method",
            "twin",
            "× twin time per inner step",
            "accuracy %",
            "twin accuracy %",
            "outer steps per run",
            "settings",
        ],
        [
            [
                r["method"],
                r["twin"],
                r["ratio"],
                f"{100 * r['accuracy']:.1f}",
                f"{100 * r['twin_accuracy']:.1f}",
                _outer_steps_cell(r["outer_steps"]),
                _settings_cell(r["settings"]),
            ]
            for r in rows
        ],
    )
    extra = ""
    if breakdown:
        extra = f"\n\n{render_breakdown(breakdown)}"
    return head + table + extra


FAULT_COLUMNS = {
    "scenario": "scenario",
    "trials": "trials",
    "faults_injected": "faults injected",
    "completed": "completed",
    "stopped_early": "stopped early",
    "errored": "errored",
    "child_runs": "child runs",
    "finished": "FINISHED",
    "running_left": "left RUNNING",
    "duplicated": "duplicated",
    "missing_metrics": "missing metrics",
    "runs_lost": "runs lost",
    "parent_summary_ok": "parent summary right",
    "seconds": "seconds",
}


def render_sweep_faults(data: dict[str, Any]) -> str:
    """One row per fault scenario: Tune's trial outcomes beside what MLflow holds; then what was injected."""
    head = (
        f"Sweep `{data['sweep_name']}`: {data['trials']} trials of {data['epochs']} epochs, {data['concurrency']} at "
        f"a time ({data['search']} + {data['scheduler']}), each scenario against its own `mlflow server` (SQLite "
        f"backend, 127.0.0.1). The driver is killed once {data['kill_driver_at']:.0%} of the trials finished, then "
        f"resumed; the server is killed once {data['kill_server_at']:.0%} finished and kept down "
        f"{data['outage_seconds']:.0f} s.\n\n"
    )
    rows = [
        [("yes" if r[k] else "no") if k == "parent_summary_ok" else r[k] for k in FAULT_COLUMNS]
        for r in data["scenarios"]
    ]
    faults = [f"- {r['scenario']}: {'; '.join(r['faults'])}" for r in data["scenarios"] if r["faults"]]
    return head + md_table(list(FAULT_COLUMNS.values()), rows) + ("\n\n" + "\n".join(faults) if faults else "")
