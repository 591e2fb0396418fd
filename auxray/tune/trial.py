"""What one Tune trial runs: a bi-level training run whose epochs are Tune iterations.

Single-process trials report after every epoch (metrics plus the trainer state as a Tune checkpoint), so
ASHA can stop them at a rung and a restored trial continues from its last epoch. The child MLflow run gets
every epoch's metrics first; the last epoch's report carries the test accuracy of the best-on-validation
weights, after the child run was finished with its artifacts.

Trials with ``scaling.workers > 1`` start a Ray Train run from inside the trial (its workers take their own
CPUs); its rank 0 logs every epoch to the child run live, as a single-process trial does, and Tune gets one
report with the final metrics at the end (ASHA cannot stop it early).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from auxray.config import RunConfig
from auxray.tracking.spool import first_line
from auxray.tracking.tracker import RunTracker
from auxray.tracking.training import TrackerSink
from auxray.train.checkpoint import LATEST, load_checkpoint, save_checkpoint
from auxray.train.launch import train
from auxray.train.run_dir import RunDir
from auxray.train.run_plan import RunPlan, plan_run
from auxray.train.session import RunView, Sink, Summary, build_trainer, run_session
from auxray.tune.config import SweepConfig
from auxray.tune.record import TrialRecord, recorded_result
from auxray.tune.runs import STOPPED_TAG, open_child
from auxray.tune.trial_clock import TrialClock

ATTEMPTS_FILE = "attempts.jsonl"


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares; captured by the trainable, so it must pickle."""

    sweep: SweepConfig
    uri: str
    experiment: str
    parent_id: str
    spool_dir: str


def tune_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of an epoch's metrics (what Tune stores and schedulers read)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            out[key] = float(value) if isinstance(value, float) else value
    return out


class TuneReport:
    """Session sink: tune.report(metrics, checkpoint=the trainer state) after every epoch; the last report also
    carries the test metrics, so ASHA and the sweep's table read them from the trial's final result."""

    def epoch(self, view: RunView, metrics: dict[str, Any], summary: Summary | None) -> None:
        out = tune_metrics(metrics)
        out["best_val_accuracy"] = float(view.best_score)
        if summary is not None:
            keys = ("test_accuracy", "final_test_accuracy", "test_mse", "best_epoch", "best_val_accuracy")
            out.update({k: summary[k] for k in keys if isinstance(summary.get(k), (int, float))})
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(view.state(), Path(tmp) / LATEST)
            tune.report(out, checkpoint=tune.Checkpoint.from_directory(tmp))


class ChildRun:
    """Session sink around a trial's child MLflow run: epochs live; at the end the results and the FINISHED
    status, before the final Tune report (after which Tune may tear the trial down)."""

    def __init__(self, tracker: RunTracker) -> None:
        self.tracker = tracker

    def epoch(self, view: RunView, metrics: dict[str, Any], summary: Summary | None) -> None:
        self.tracker.epoch(view, metrics, None)  # a restored trial's reopened run skips epochs logged already
        if summary is not None:
            self.tracker.finish(view, summary, "FINISHED")


def _log_attempt(trial_dir: Path, start_epoch: int) -> None:
    """One line per (re)start of the trial, so a resumed sweep can be checked for re-run trials."""
    with open(trial_dir / ATTEMPTS_FILE, "a") as f:
        f.write(json.dumps({"start_epoch": start_epoch, "time": time.time()}) + "\n")


def make_trainable(ctx: TrialContext) -> Callable[[dict[str, Any]], None]:
    """The Tune function trainable of a sweep."""

    def train_trial(params: dict[str, Any]) -> None:
        run_trial(ctx, params)

    return train_trial


def run_trial(ctx: TrialContext, params: dict[str, Any]) -> None:
    """One trial: build its config, reattach or open its child run, train, report."""
    trial_id = tune.get_context().get_trial_id()
    trial_dir = ctx.sweep.trial_files_dir(trial_id)
    trial_dir.mkdir(parents=True, exist_ok=True)
    clock = TrialClock(trial_dir)
    cfg = ctx.sweep.trial_config(params)
    tracker = open_child(
        ctx.uri,
        ctx.experiment,
        sweep_name=ctx.sweep.name,
        parent_id=ctx.parent_id,
        trial_id=trial_id,
        spool_dir=ctx.spool_dir,
    )
    clock.mark("child_run")
    recorded = recorded_result(trial_dir, params)
    if recorded is not None:  # finished before the driver died, after Tune last saved its state
        _log_attempt(trial_dir, int(recorded["epoch"]))
        if not tracker.ended:
            tracker.end("FINISHED")
        tune.report(recorded)
        return
    if cfg.scaling.workers > 1:
        _run_distributed_trial(ctx, cfg, tracker, trial_id)
        return
    _run_local_trial(ctx, cfg, tracker, trial_dir, params, clock)


def _run_local_trial(
    ctx: TrialContext,
    cfg: RunConfig,
    tracker: RunTracker,
    trial_dir: Path,
    params: dict[str, Any],
    clock: TrialClock,
) -> None:
    cfg.trainer.threads = cfg.trainer.threads or max(1, int(ctx.sweep.cpus_per_trial))
    plan = RunPlan(cfg, trial_dir.name, trial_dir.parent, trial_dir.name)  # Tune's checkpoint is what resumes it
    stopped = False
    try:
        checkpoint = tune.get_checkpoint()
        state = None
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                state = load_checkpoint(Path(d) / LATEST)
        trainer = build_trainer(plan, state=state)
        if checkpoint is None:
            tracker.log_config(cfg)
            tracker.log_params({"trial": params})
        clock.mark("trainer")
        _log_attempt(trial_dir, trainer.epoch)
        clock.start_epoch = trainer.epoch
        # The clock before the final Tune report, after which Tune may end this process.
        sinks: list[Sink] = [RunDir(plan.run_dir, cfg), TrialRecord(trainer, trial_dir, params), ChildRun(tracker)]
        run_session(trainer, [*sinks, clock, TuneReport()], run_dir=plan.run_dir)
    except SystemExit:
        stopped = True
        raise
    except BaseException as exc:
        _fail(tracker, exc)
        raise
    finally:
        if stopped and not tracker.ended:
            _close_stopped(tracker, trial_dir)


def _fail(tracker: RunTracker, exc: BaseException) -> None:
    """End a trial's child run FAILED with the error as a tag (unless it already ended)."""
    if not tracker.ended:
        tracker.set_tags({"auxray.error": f"{type(exc).__name__}: {first_line(exc)}"})
        tracker.end("FAILED")


def _close_stopped(tracker: RunTracker, trial_dir: Path) -> None:
    """A trial Tune stopped (ASHA, or the sweep ending): end the child run first, then best-effort artifacts."""
    try:
        tracker.set_tags({STOPPED_TAG: "true"})
        tracker.end("FINISHED")
        tracker.log_artifact(trial_dir / "best.pt", "checkpoints")
        tracker.log_artifact(trial_dir / "metrics.jsonl")
    except Exception as exc:
        print(f"auxray: could not close a stopped trial's run: {first_line(exc)}", file=sys.stderr)


def _run_distributed_trial(ctx: TrialContext, cfg: RunConfig, tracker: RunTracker, trial_id: str) -> None:
    """A data-parallel trial: one Ray Train run whose rank 0 logs to the child run live; one final Tune report."""
    try:
        tracker.log_config(cfg)
        sink = TrackerSink(tracker.uri, str(tracker.run_id), ctx.experiment, str(Path(ctx.spool_dir).resolve()))
        result = train(plan_run(cfg, name=f"{ctx.sweep.name}-{trial_id}"), sinks=[sink], progress=False)
        tracker.end("FINISHED")
    except BaseException as exc:
        _fail(tracker, exc)
        raise
    last = result["history"][-1] if result.get("history") else {}
    final = tune_metrics(last)
    final.update({k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    final.setdefault("epoch", cfg.trainer.epochs)
    final.setdefault("val_accuracy", final.get("best_val_accuracy", 0.0))
    tune.report(final)
