"""The sweep driver: a Ray Tune experiment whose trials are bi-level runs, one MLflow parent run per sweep
and one child run per trial, resumable after the driver dies (Tuner.restore)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any, TypedDict

from auxray.data import check_source
from auxray.errors import UserError
from auxray.tracking import check_reachable, end_parent, resolve_uri
from auxray.tracking.spool import replay_folder
from auxray.tracking.tracker import Status
from auxray.tracking.uri import wait_reachable
from auxray.train.ray_cluster import ensure_ray
from auxray.tune.callbacks import ActiveSweep, TrialCloser, activate
from auxray.tune.config import SweepConfig, finite
from auxray.tune.durable import reconcile_search_state, repair_state
from auxray.tune.runs import children, fail_stale_children, parent_run, tag_orphans
from auxray.tune.space import scheduler_for, search_setup
from auxray.tune.trial import TrialContext, make_trainable

MAX_TRIAL_FAILURES = 1
TUNE_ENV_DEFAULTS = {
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
}


def start_ray() -> bool:
    """Join RAY_ADDRESS, or start a local instance; True when this call started Ray."""
    return ensure_ray(None, log_to_driver=False)


def trial_resources(sweep: SweepConfig) -> dict[str, float]:
    """A single-process trial takes cpus_per_trial and gpus_per_trial; a data-parallel one only hosts the Ray
    Train driver (its workers ask for their own)."""
    if sweep.base_config().scaling.workers > 1:
        return {"cpu": 0.01}
    if sweep.gpus_per_trial > 0:
        return {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial}
    return {"cpu": sweep.cpus_per_trial}


def check_gpus(sweep: SweepConfig, have: float) -> None:
    """A sweep whose trials ask for more GPUs than the Ray cluster's `have` would wait for them forever: one line
    instead."""
    wanted = trial_resources(sweep).get("gpu", 0.0)
    if wanted > have:
        raise UserError(f"gpus_per_trial is {wanted} but the Ray cluster has {have:g} GPUs")


def _tuner(ctx: TrialContext, resume: bool) -> Any:
    """A new Tuner for the sweep, or the one restored from its experiment folder."""
    from ray import tune

    sweep = ctx.sweep
    trainable = tune.with_resources(make_trainable(ctx), trial_resources(sweep))
    path = str(sweep.experiment_dir)
    if resume:
        repaired = repair_state(sweep.experiment_dir, sweep.state_backup_dir)
        if repaired:
            print(
                f"auxray: restored truncated sweep state from its backup: {', '.join(repaired)}",
                file=sys.stderr,
                flush=True,
            )
        reconcile_search_state(sweep.experiment_dir)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    search_alg, param_space = search_setup(sweep)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            search_alg=search_alg,
            scheduler=scheduler_for(sweep, sweep.epochs),
            num_samples=1 if sweep.search == "grid" else sweep.trials,  # a grid runs each combination once
            max_concurrent_trials=sweep.concurrency if sweep.search == "random" else None,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=sweep.name,
            storage_path=str(sweep.storage_path),
            failure_config=tune.FailureConfig(max_failures=MAX_TRIAL_FAILURES),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_kept(sweep)),
            # A trial ends at its last epoch's report, before a scheduler can pause it there (PBT would, and the
            # trial restored after it would have no epoch left to report).
            stop={"training_iteration": sweep.epochs},
            callbacks=[TrialCloser()],
            verbose=0,
        ),
    )


# Checkpoints a PBT trial keeps: an exploiting trial restores the one its donor had at the perturbation, and the
# donor may have saved a few more epochs by then (one kept is deleted under it).
PBT_CHECKPOINTS_KEPT = 4


def checkpoints_kept(sweep: SweepConfig) -> int:
    """Tune checkpoints kept per trial: the latest (what a restored trial resumes from), more under PBT."""
    return PBT_CHECKPOINTS_KEPT if sweep.scheduler.type == "pbt" else 1


def _check_experiment(sweep: SweepConfig, resume: bool) -> None:
    """--resume needs an earlier experiment; a fresh sweep must not overwrite one."""
    from ray import tune

    path = sweep.experiment_dir
    exists = path.is_dir() and tune.Tuner.can_restore(str(path))
    if resume and not exists:
        raise UserError(f"nothing to resume: no sweep {sweep.name!r} under {sweep.storage_path}")
    if not resume and path.exists():
        raise UserError(
            f"sweep {sweep.name!r} already exists at {path}; continue it with --resume, "
            f"or rename the sweep / remove that folder"
        )


class TrialRow(TypedDict):
    """One trial's outcome, as summarise_grid collects it."""

    trial_id: str
    params: dict[str, Any]
    epochs: int
    score: float | None
    val_accuracy: float | None
    test_accuracy: float | None
    error: bool
    ended: float | None  # Unix time of its last result (Tune's `timestamp`): the order trials finished in


def summarise_grid(grid: Any, sweep: SweepConfig, epochs: int) -> dict[str, Any]:
    """Per-trial outcomes and the best trial: the best `best_<metric>` among trials that ran every epoch
    (any trial when none did), with its test accuracy."""
    rows: list[TrialRow] = []
    for result in grid:
        metrics = result.metrics or {}
        rows.append(
            {
                "trial_id": metrics.get("trial_id") or (result.path or "").rsplit("/", 1)[-1],
                "params": dict(result.config or {}),
                "epochs": int(metrics.get("epoch", 0) or 0),
                "score": finite(metrics.get(f"best_{sweep.metric}", metrics.get(sweep.metric))),
                "val_accuracy": finite(metrics.get("best_val_accuracy", metrics.get("val_accuracy"))),
                "test_accuracy": finite(metrics.get("test_accuracy")),
                "error": result.error is not None,
                "ended": finite(metrics.get("timestamp")),
            }
        )
    sign = 1 if sweep.mode == "max" else -1
    scored = [r for r in rows if r["score"] is not None]
    complete = [r for r in scored if r["epochs"] >= epochs and r["test_accuracy"] is not None]
    pool = complete or scored

    def signed_score(r: TrialRow) -> float:
        score = r["score"]
        assert score is not None  # the pool holds scored rows only
        return sign * score

    best = max(pool, key=signed_score) if pool else None
    return {
        "trials": len(rows),
        "completed": sum(1 for r in rows if r["epochs"] >= epochs and not r["error"]),
        "stopped_early": sum(1 for r in rows if 0 < r["epochs"] < epochs and not r["error"]),
        "errored": sum(1 for r in rows if r["error"]),
        "trial_epochs": sum(r["epochs"] for r in rows),
        "budget_epochs": len(rows) * epochs,
        "best": None
        if best is None
        else {k: best[k] for k in ("trial_id", "params", "val_accuracy", "test_accuracy", "epochs")},
        "per_trial": [
            {k: r[k] for k in ("trial_id", "params", "epochs", "val_accuracy", "test_accuracy", "error", "ended")}
            for r in rows
        ],
    }


def _log_parent_summary(uri: str, parent_id: str, summary: dict[str, Any]) -> None:
    """The sweep's outcome on its parent run: best metrics, the best trial's params, spent trial-epochs."""
    from mlflow import MlflowClient

    from auxray.tracking.uri import http_limits

    client = MlflowClient(tracking_uri=uri)
    best = summary.get("best") or {}
    with http_limits():
        for key in ("trials", "completed", "stopped_early", "errored", "trial_epochs"):
            client.log_metric(parent_id, key, summary[key])
        for key in ("val_accuracy", "test_accuracy"):
            if best.get(key) is not None:
                client.log_metric(parent_id, f"best_{key}", best[key])
        if best:
            client.set_tag(parent_id, "auxray.best_trial", best["trial_id"])
            for key, value in best["params"].items():
                client.set_tag(parent_id, f"best.{key}", str(value))


STORE_WAIT_S = 600.0  # how long a sweep's end waits for a tracking server that went away


def _await_store(uri: str, spool_dir: str) -> None:
    """At the sweep's end, wait (bounded) for a tracking store that went away: the summary and the trials' spooled
    records go there. UserError when it does not come back."""
    if wait_reachable(uri, 0):
        return
    print(
        f"auxray: MLflow tracking store {uri} unreachable at the end of the sweep; waiting up to {STORE_WAIT_S:.0f}s "
        "to send the sweep's summary and its trials' spooled records",
        file=sys.stderr,
        flush=True,
    )
    if not wait_reachable(uri, STORE_WAIT_S):
        raise UserError(
            f"MLflow tracking store {uri} still unreachable after {STORE_WAIT_S:.0f}s: the sweep's summary was not "
            f"logged; its trials' unsent records are in {spool_dir} (`auxray tracking replay FILE` sends one)"
        )


def _close_leftovers(uri: str, parent_id: str, status: str) -> None:
    """Child runs still RUNNING once the driver stops (interrupted or failed): give them `status`."""
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        for run in children(uri, parent_id, status="RUNNING"):
            client.set_tag(run.info.run_id, "auxray.interrupted", "sweep driver stopped")
            client.set_terminated(run.info.run_id, status)
    except Exception:
        pass


def run_sweep(
    sweep: SweepConfig, *, resume: bool = False, tracking_uri: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) a sweep and return its summary: the best trial's params, validation and test
    accuracy, the number of trials and the trial-epochs spent. The tracking store is checked first."""
    t0 = time.perf_counter()
    base = sweep.base_config()
    epochs = sweep.epochs
    uri = resolve_uri(tracking_uri or sweep.tracking.uri or base.tracking.uri)
    experiment = sweep.tracking.experiment or base.tracking.experiment
    check_reachable(uri)
    _check_experiment(sweep, resume)
    if not os.environ.get("RAY_ADDRESS"):  # a cluster's nodes may see paths this machine does not
        check_source(
            sweep.trial_config(sweep.first_params()).data
        )  # the data and its aux table, once, before Ray and any trial
    if not resume:
        shutil.rmtree(sweep.state_backup_dir, ignore_errors=True)
    params = {
        "base": str(sweep.base_path) if sweep.base is not None else None,
        "search": sweep.search,
        "trials": sweep.trials,
        "concurrency": sweep.concurrency,
        "scheduler": sweep.scheduler.type,
        "metric": sweep.metric,
        "seed": sweep.seed,
        "overrides": sweep.overrides,
        "space": {k: v.model_dump(exclude_none=True) for k, v in sweep.space.items()},
        "grid": sweep.grid,
    }
    parent_id = parent_run(uri, experiment, sweep.name, resume=resume, params=params)
    stale = fail_stale_children(uri, parent_id) if resume else 0
    for key, value in TUNE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    ctx = TrialContext(
        sweep=sweep,
        uri=uri,
        experiment=experiment,
        parent_id=parent_id,
        spool_dir=str(sweep.experiment_dir / "mlflow-spool"),
    )
    status: Status = "FAILED"
    started = False
    try:
        started = start_ray()
        import ray

        check_gpus(sweep, ray.cluster_resources().get("GPU", 0.0))
        activate(
            ActiveSweep(
                uri=uri,
                parent_id=parent_id,
                epochs=epochs,
                trials=sweep.trials,
                progress=progress,
                exp_dir=sweep.experiment_dir,
                backup_dir=sweep.state_backup_dir,
            )
        )
        grid = _tuner(ctx, resume).fit()
        # Trials that ended while the store was down left their last records in their spools: send them now.
        _await_store(uri, ctx.spool_dir)
        replayed = replay_folder(ctx.spool_dir, uri)
        summary = summarise_grid(grid, sweep, epochs)
        summary["spools_replayed"] = replayed
        if summary["best"] is None:
            raise UserError(
                f"sweep {sweep.name}: no trial reported {sweep.metric} "
                f"({summary['errored']} of {summary['trials']} failed; see {sweep.experiment_dir})"
            )
        _log_parent_summary(uri, parent_id, summary)
        if resume:
            summary["orphaned_runs"] = tag_orphans(uri, parent_id, {r["trial_id"] for r in summary["per_trial"]})
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        activate(None)
        if status != "FINISHED":
            _close_leftovers(uri, parent_id, status)
        end_parent(uri, parent_id, status)
        if started:
            import ray

            ray.shutdown()
    summary.update(
        {
            "sweep": sweep.name,
            "search": sweep.search,
            "scheduler": sweep.scheduler.type,
            "resumed": resume,
            "stale_runs_failed": stale,
            "experiment_dir": str(sweep.experiment_dir),
            "tracking_uri": uri,
            "experiment": experiment,
            "parent_run_id": parent_id,
            "seconds": time.perf_counter() - t0,
        }
    )
    return summary
