"""What one Tune trial runs: a bi-level training run whose epochs are Tune iterations.

Single-process trials report after every epoch (metrics plus the trainer state as a Tune checkpoint), so
ASHA can stop them at a rung and a restored trial continues from its last epoch. The child MLflow run gets
every epoch's metrics first; the last epoch's report carries the test accuracy of the best-on-validation
weights, after the child run was finished with its artifacts.

Trials with ``scaling.workers > 1`` run ``auxray.train.ray_run.run_distributed`` (a Ray Train run started
from inside the trial; its workers take their own CPUs). run_distributed returns only a summary, so such a
trial reports once, at the end: every epoch of the returned history is logged to MLflow, and Tune gets the
final metrics (ASHA cannot stop it early).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from auxray.tracking.spool import first_line
from auxray.tune.config import SweepConfig
from auxray.tune.runs import STOPPED_TAG, open_child

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


class TuneReporter:
    """Epoch callback: tune.report(metrics, checkpoint=trainer state) after every epoch; at the last epoch
    it first finishes the child MLflow run (test accuracy, artifacts) and adds the test metrics."""

    def __init__(self, finish: Callable[[Any], dict[str, Any]]) -> None:
        self.finish = finish
        self.final_reported = False

    def __call__(self, trainer: Any, metrics: dict[str, Any]) -> None:
        out = tune_metrics(metrics)
        out["best_val_accuracy"] = float(trainer.best["val_accuracy"])
        if trainer.epoch >= trainer.cfg.trainer.epochs:
            out.update(self._final(trainer))
        self._report(trainer, out)

    def _final(self, trainer: Any) -> dict[str, float]:
        result = self.finish(trainer)
        self.final_reported = True
        keys = ("test_accuracy", "final_test_accuracy", "test_mse", "best_epoch")
        return {k: result[k] for k in keys if isinstance(result.get(k), (int, float))}

    def report_final(self, trainer: Any) -> None:
        """For a trial restored after its last epoch: report the final result once more."""
        out = tune_metrics(trainer.history[-1]) if trainer.history else {"epoch": trainer.epoch}
        out["best_val_accuracy"] = float(trainer.best["val_accuracy"])
        out.update(self._final(trainer))
        self._report(trainer, out)

    @staticmethod
    def _report(trainer: Any, metrics: dict[str, Any]) -> None:
        from ray import tune

        from auxray.train.checkpoint import LATEST, save_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(trainer.state_dict(), Path(tmp) / LATEST)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


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
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    trial_dir = ctx.sweep.trial_files_dir(trial_id)
    trial_dir.mkdir(parents=True, exist_ok=True)
    cfg = ctx.sweep.trial_config(params)
    tracker = open_child(ctx.uri, ctx.experiment, sweep_name=ctx.sweep.name, parent_id=ctx.parent_id,
                         trial_id=trial_id, spool_dir=ctx.spool_dir)
    if cfg.scaling.workers > 1:
        _run_distributed_trial(ctx, cfg, tracker, trial_id)
        return
    _run_local_trial(ctx, cfg, tracker, trial_dir, params)


def _run_local_trial(ctx: TrialContext, cfg: Any, tracker: Any, trial_dir: Path, params: dict[str, Any]) -> None:
    from ray import tune

    from auxray.data import build_data
    from auxray.train.checkpoint import LATEST, load_checkpoint
    from auxray.train.loop import BilevelTrainer
    from auxray.train.run import Checkpointer, summarise

    t0 = time.perf_counter()
    cfg.trainer.threads = cfg.trainer.threads or max(1, int(ctx.sweep.cpus_per_trial))
    stopped = False
    trainer = None
    try:
        data = build_data(cfg.data)

        def finish(tr: Any) -> dict[str, Any]:
            result = summarise(tr, trial_dir, time.perf_counter() - t0)
            tracker.finish(tr, result, "FINISHED")
            return result

        reporter = TuneReporter(finish)
        trainer = BilevelTrainer(cfg, data, callbacks=[Checkpointer(trial_dir, cfg.trainer.epochs), tracker,
                                                       reporter], progress=False)
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                trainer.load_state_dict(load_checkpoint(Path(d) / LATEST))
        else:
            tracker.log_config(cfg)
            tracker.log_params({"trial": params})
        _log_attempt(trial_dir, trainer.epoch)
        trainer.fit()
        if not reporter.final_reported:
            reporter.report_final(trainer)
    except SystemExit:
        stopped = True
        raise
    except BaseException as exc:
        if not tracker.ended:
            tracker.set_tags({"auxray.error": f"{type(exc).__name__}: {first_line(exc)}"})
            tracker.end("FAILED")
        raise
    finally:
        if stopped and not tracker.ended:
            _close_stopped(tracker, trial_dir)


def _close_stopped(tracker: Any, trial_dir: Path) -> None:
    """A trial Tune stopped (ASHA, or the sweep ending): end the child run first, then best-effort artifacts."""
    try:
        tracker.set_tags({STOPPED_TAG: "true"})
        tracker.end("FINISHED")
        tracker.log_artifact(trial_dir / "best.pt", "checkpoints")
        tracker.log_artifact(trial_dir / "metrics.jsonl")
    except Exception as exc:
        print(f"auxray: could not close a stopped trial's run: {first_line(exc)}", file=sys.stderr)


def _run_distributed_trial(ctx: TrialContext, cfg: Any, tracker: Any, trial_id: str) -> None:
    """A data-parallel trial: one Ray Train run, its history replayed to MLflow, one final Tune report."""
    from ray import tune

    from auxray.train.ray_run import run_distributed

    try:
        tracker.log_config(cfg)
        result = run_distributed(cfg, name=f"{ctx.sweep.name}-{trial_id}", progress=False)
        for epoch_metrics in result.get("history", []):
            tracker.log_metrics({k: v for k, v in epoch_metrics.items() if k != "epoch"},
                                int(epoch_metrics.get("epoch", 0)))
        summary = {k: v for k, v in result.items() if k != "history"}
        tracker.finish(None, summary, "FINISHED")
    except BaseException as exc:
        if not tracker.ended:
            tracker.set_tags({"auxray.error": f"{type(exc).__name__}: {first_line(exc)}"})
            tracker.end("FAILED")
        raise
    last = result["history"][-1] if result.get("history") else {}
    final = tune_metrics(last)
    final.update({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    final.setdefault("epoch", cfg.trainer.epochs)
    final.setdefault("val_accuracy", final.get("best_val_accuracy", 0.0))
    tune.report(final)
