"""Sweep benchmark: at the same trial budget, TPE with ASHA early stopping against random search that runs
every trial to the end. Reports the best validation accuracy each reaches (and that trial's test
accuracy), the compute spent in trial-epochs, and wall time."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from auxray.jsonout import print_json
from auxray.tune.config import SchedulerConfig, SweepConfig, load_sweep

STRATEGIES = {
    "tpe_asha": {"search": "tpe", "scheduler": "asha"},
    "random_full": {"search": "random", "scheduler": "none"},
}


def _variant(sweep: SweepConfig, label: str, *, trials: int, concurrency: int, seed: int, storage: Path) -> SweepConfig:
    """A copy of the sweep with one strategy, its own name and storage."""
    strategy = STRATEGIES[label]
    scheduler = SchedulerConfig(**{**sweep.scheduler.model_dump(), "type": strategy["scheduler"]})
    variant = sweep.model_copy(
        update={
            "name": f"{sweep.name}-{label}",
            "search": strategy["search"],
            "scheduler": scheduler,
            "trials": trials,
            "concurrency": concurrency,
            "seed": seed,
            "storage": str(storage),
        }
    )
    variant._source_dir, variant._cwd = sweep._source_dir, sweep._cwd
    return variant


def _outcome(result: dict[str, Any]) -> dict[str, Any]:
    best = result.get("best") or {}
    return {
        "best_val_accuracy": best.get("val_accuracy"),
        "best_test_accuracy": best.get("test_accuracy"),
        "best_params": best.get("params"),
        "trial_epochs": result["trial_epochs"],
        "budget_epochs": result["budget_epochs"],
        "completed": result["completed"],
        "stopped_early": result["stopped_early"],
        "errored": result["errored"],
        "seconds": round(result["seconds"], 1),
        "parent_run_id": result["parent_run_id"],
        "per_trial": result["per_trial"],
    }


def run_sweep_bench(
    base: str | Path | SweepConfig,
    trials: int | None = None,
    *,
    concurrency: int | None = None,
    storage: str | Path = "runs/bench-sweep",
    tracking_uri: str | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run both strategies of the sweep in `base` (a sweep file or SweepConfig) with the same number of
    trials, one after the other on one Ray instance, and compare them."""
    from auxray.tune.sweep import run_sweep, start_ray

    sweep = base if isinstance(base, SweepConfig) else load_sweep(base)
    trials = trials or sweep.trials
    concurrency = concurrency or sweep.concurrency
    seed = sweep.seed if seed is None else seed
    root = Path(storage).expanduser().resolve() / datetime.now().strftime("%Y%m%d-%H%M%S")
    started = start_ray()
    results: dict[str, Any] = {}
    try:
        for label in STRATEGIES:
            variant = _variant(sweep, label, trials=trials, concurrency=concurrency, seed=seed, storage=root)
            results[label] = _outcome(run_sweep(variant, tracking_uri=tracking_uri, progress=progress))
    finally:
        if started:
            import ray

            ray.shutdown()
    a, b = results["tpe_asha"], results["random_full"]
    return {
        "sweep": sweep.name,
        "trials": trials,
        "concurrency": concurrency,
        "epochs_per_trial": sweep.epochs,
        "space": sorted(sweep.space),
        "storage": str(root),
        "strategies": results,
        "comparison": {
            "best_val_accuracy": {"tpe_asha": a["best_val_accuracy"], "random_full": b["best_val_accuracy"]},
            "trial_epochs": {"tpe_asha": a["trial_epochs"], "random_full": b["trial_epochs"]},
            "compute_saved": round(1 - a["trial_epochs"] / b["trial_epochs"], 3) if b["trial_epochs"] else None,
            "seconds": {"tpe_asha": a["seconds"], "random_full": b["seconds"]},
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def bench_sweep_command(
    base: str,
    *,
    trials: int | None,
    concurrency: int | None,
    storage: str,
    tracking_uri: str | None,
    seed: int | None,
    out: str | None,
) -> int:
    """`auxray bench sweep` (its parser lives in auxray.cli): the comparison on stderr, the JSON on stdout and
    in `out`. Returns the exit code."""
    result = run_sweep_bench(
        base, trials=trials, concurrency=concurrency, storage=storage, tracking_uri=tracking_uri, seed=seed
    )
    print(f"bench sweep: {json.dumps(result['comparison'])}", file=sys.stderr, flush=True)
    print_json(result, out)
    return 0
