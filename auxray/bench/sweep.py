"""Sweep benchmark at scale: the same sweep run with TPE + ASHA, random search to the end, and population-based
training, each on several search seeds, one after the other on one Ray instance and one MLflow store. Reports the
best validation accuracy each finds (and that trial's test accuracy) against the trial-epochs and wall time it
spent, trials per hour, the driver's memory and the tracking store's size."""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from auxray.bench.machine import log
from auxray.bench.table import mean_std
from auxray.errors import UserError
from auxray.jsonout import print_json, write_json
from auxray.tune.config import PBT_KEYS, SchedulerConfig, SweepConfig, load_sweep, unperturbable

STRATEGIES = {
    "tpe_asha": {"search": "tpe", "scheduler": "asha"},
    "random_full": {"search": "random", "scheduler": "none"},
    "pbt": {"search": "random", "scheduler": "pbt"},
}
DEFAULT_SEEDS = (0, 1, 2)


def check_strategies(sweep: SweepConfig, strategies: Sequence[str]) -> None:
    """Known strategies only, and PBT only over keys it can perturb (one line before Ray starts)."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise UserError(f"unknown strategy {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    if not strategies:
        raise UserError("--strategies is empty")
    fixed = unperturbable(sweep.space)
    if "pbt" in strategies and fixed:
        raise UserError(
            f"strategy pbt cannot perturb {', '.join(fixed)} (only {', '.join(p + '*' for p in PBT_KEYS)}); "
            "leave pbt out with --strategies tpe_asha,random_full"
        )


def _variant(
    sweep: SweepConfig, label: str, *, trials: int, concurrency: int, seed: int, storage: Path, gpus: float
) -> SweepConfig:
    """A copy of the sweep with one strategy and search seed, its own name and storage, and the GPU share asked."""
    strategy = STRATEGIES[label]
    scheduler = SchedulerConfig(**{**sweep.scheduler.model_dump(), "type": strategy["scheduler"]})
    variant = sweep.model_copy(
        update={
            "name": f"{sweep.name}-{label}-seed{seed}",
            "search": strategy["search"],
            "scheduler": scheduler,
            "trials": trials,
            "concurrency": concurrency,
            "seed": seed,
            "storage": str(storage),
            "gpus_per_trial": gpus,
        }
    )
    variant._source_dir, variant._cwd = sweep._source_dir, sweep._cwd
    return variant


def best_so_far(per_trial: Sequence[dict[str, Any]], epochs: int) -> list[list[float]]:
    """[trial-epochs spent, best validation accuracy among the trials that ran every epoch] each time a trial ended,
    in the order they ended: the search's progress against its compute."""
    curve: list[list[float]] = []
    spent, best = 0, None
    for trial in sorted(per_trial, key=lambda t: t.get("ended") or 0.0):
        spent += trial["epochs"]
        val = trial.get("val_accuracy")
        if trial["epochs"] >= epochs and val is not None and not trial["error"]:
            best = val if best is None else max(best, val)
        if best is not None:
            curve.append([spent, best])
    return curve


def _store_bytes(uri: str) -> int | None:
    """Size of a SQLite tracking store and its artifact folder (None for a server: its disk is not ours)."""
    from auxray.tracking.uri import ARTIFACT_DIR, sqlite_path

    db = sqlite_path(uri)
    if db is None:
        return None
    files = [db, *(p for p in (db.parent / ARTIFACT_DIR).rglob("*") if p.is_file())]
    return sum(p.stat().st_size for p in files if p.is_file())


def _driver_memory_mb() -> dict[str, float]:
    """This driver's resident memory now and at its peak, in MiB (Linux reports the peak in KiB)."""
    import psutil  # a Ray dependency

    return {
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1),
    }


def pbt_exploits(experiment_dir: str | Path) -> int | None:
    """How many times a PBT trial copied another's checkpoint: Tune writes one line per exploit to pbt_global.txt
    (None for a sweep without PBT)."""
    log_file = Path(experiment_dir) / "pbt_global.txt"
    if not log_file.is_file():
        return None
    return sum(1 for line in log_file.read_text().splitlines() if line.strip())


def _outcome(result: dict[str, Any], epochs: int, uri: str) -> dict[str, Any]:
    best = result.get("best") or {}
    seconds = result["seconds"]
    store = _store_bytes(uri)
    return {
        "best_val_accuracy": best.get("val_accuracy"),
        "best_test_accuracy": best.get("test_accuracy"),
        "best_params": best.get("params"),
        "trials": result["trials"],
        "trial_epochs": result["trial_epochs"],
        "budget_epochs": result["budget_epochs"],
        "completed": result["completed"],
        "stopped_early": result["stopped_early"],
        "errored": result["errored"],
        "exploits": pbt_exploits(result["experiment_dir"]),
        "seconds": round(seconds, 1),
        "trials_per_hour": round(3600 * result["trials"] / seconds, 1),
        "driver": _driver_memory_mb(),
        "store_mb": None if store is None else round(store / 2**20, 2),
        "parent_run_id": result["parent_run_id"],
        "curve": best_so_far(result["per_trial"], epochs),
        "per_trial": [
            {k: t[k] for k in ("params", "epochs", "val_accuracy", "test_accuracy", "error")}
            for t in result["per_trial"]
        ],
    }


def _over_seeds(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean and spread (bench.table's) over search seeds of the values that exist."""
    have = [float(v) for v in values if v is not None]
    if not have:
        return {"mean": None, "std": None}
    mean, std = mean_std(have)
    return {"mean": round(mean, 4), "std": round(std, 4)}


def summarise(runs: Sequence[dict[str, Any]], strategies: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per strategy, mean and spread over its search seeds of what the bench compares."""
    keys = ("best_val_accuracy", "best_test_accuracy", "trial_epochs", "seconds", "trials_per_hour", "errored")
    out: dict[str, dict[str, Any]] = {}
    for label in strategies:
        mine = [r for r in runs if r["strategy"] == label]
        out[label] = {"seeds": [r["seed"] for r in mine], **{k: _over_seeds([r[k] for r in mine]) for k in keys}}
    return out


def run_sweep_bench(
    base: str | Path | SweepConfig,
    trials: int | None = None,
    *,
    concurrency: int | None = None,
    storage: str | Path = "runs/bench-sweep",
    tracking_uri: str | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    strategies: Sequence[str] = tuple(STRATEGIES),
    gpus_per_trial: float | None = None,
    progress: bool = True,
    after_each: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every strategy of the sweep in `base` (a sweep file or SweepConfig) on every search seed with the same
    number of trials, one sweep after another on one Ray instance, and compare them. `after_each` gets the result
    so far after every sweep (`complete` false until the last)."""
    sweep = base if isinstance(base, SweepConfig) else load_sweep(base)
    check_strategies(sweep, strategies)
    if not seeds:
        raise UserError("--seeds is empty")
    if trials is not None and trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    if gpus_per_trial is not None and gpus_per_trial < 0:
        raise UserError(f"--gpus-per-trial must be at least 0, got {gpus_per_trial}")
    from auxray.tracking import resolve_uri
    from auxray.tune.sweep import run_sweep, start_ray

    trials = trials or sweep.trials
    concurrency = concurrency or sweep.concurrency
    gpus = sweep.gpus_per_trial if gpus_per_trial is None else gpus_per_trial
    root = Path(storage).expanduser().resolve() / datetime.now().strftime("%Y%m%d-%H%M%S")
    uri = resolve_uri(tracking_uri or f"sqlite:///{root / 'mlflow.db'}")
    result: dict[str, Any] = {
        "sweep": sweep.name,
        "trials": trials,
        "concurrency": concurrency,
        "cpus_per_trial": sweep.cpus_per_trial,
        "gpus_per_trial": gpus,
        "epochs_per_trial": sweep.epochs,
        "space": sorted(sweep.space),
        "search_seeds": list(seeds),
        "strategies": list(strategies),
        "storage": str(root),
        "tracking_uri": uri,
        "complete": False,
        "runs": [],
        "summary": {},
    }
    runs: list[dict[str, Any]] = result["runs"]
    plan = [(seed, label) for seed in seeds for label in strategies]
    started = start_ray()
    try:
        for i, (seed, label) in enumerate(plan, 1):
            variant = _variant(sweep, label, trials=trials, concurrency=concurrency, seed=seed, storage=root, gpus=gpus)
            log(f"bench sweep [{i}/{len(plan)}]: {label}, search seed {seed}, {trials} trials")
            outcome = run_sweep(variant, tracking_uri=uri, progress=progress)
            runs.append({"strategy": label, "seed": seed, **_outcome(outcome, sweep.epochs, uri)})
            result.update(summary=summarise(runs, strategies), complete=i == len(plan))
            result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            r = runs[-1]
            log(
                f"bench sweep [{i}/{len(plan)}]: best val {r['best_val_accuracy']} (test {r['best_test_accuracy']}), "
                f"{r['trial_epochs']} trial-epochs, {r['seconds']} s, {r['trials_per_hour']} trials/h"
            )
            if after_each is not None:
                after_each(result)
    finally:
        if started:
            import ray

            ray.shutdown()
    return result


def bench_sweep_command(
    base: str,
    *,
    trials: int | None,
    concurrency: int | None,
    storage: str,
    tracking_uri: str | None,
    seeds: Sequence[int],
    strategies: Sequence[str],
    gpus_per_trial: float | None,
    out: str | None,
) -> int:
    """`auxray bench sweep` (its parser lives in auxray.cli): a progress line per sweep and the comparison on
    stderr, the JSON on stdout and in `out`, and a plot of the search's progress beside `out`. Returns the exit
    code."""

    def keep(partial: dict[str, Any]) -> None:
        """The sweeps finished so far, written over `out`: a stopped bench loses none of them."""
        if out is not None:
            write_json(partial, out)

    result = run_sweep_bench(
        base,
        trials=trials,
        concurrency=concurrency,
        storage=storage,
        tracking_uri=tracking_uri,
        seeds=seeds,
        strategies=strategies,
        gpus_per_trial=gpus_per_trial,
        after_each=keep,
    )
    print(f"bench sweep: {json.dumps(result['summary'])}", file=sys.stderr, flush=True)
    print_json(result, out)
    if out is not None:
        from auxray.bench.sweep_page import plot_search_progress

        plot_search_progress(result, Path(out).with_suffix(".png"))
    return 0
