"""Driver-side Tune callback: closes each finished trial's MLflow child run (FINISHED, tagged stopped_early
when the scheduler cut it short; FAILED on error) and prints one compact line per finished trial.

Tune pickles the callback into the experiment and a resumed sweep gets that copy back, so the callback
keeps no state of its own: it reads the sweep the driver is running now from ``activate``."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from auxray.tune.durable import backup_state, note_finished
from auxray.tune.runs import close_child

BACKUP_PERIOD_S = 5.0


@dataclass
class ActiveSweep:
    """What the driver is running now."""

    uri: str
    parent_id: str
    epochs: int
    trials: int
    progress: bool
    exp_dir: Path
    backup_dir: Path
    done: int = 0
    last_backup: float = 0.0


_ACTIVE: ActiveSweep | None = None


def activate(sweep: ActiveSweep | None) -> None:
    """Point the callback at the sweep being driven (None when it ends)."""
    global _ACTIVE
    _ACTIVE = sweep


def format_params(config: dict[str, Any]) -> str:
    """`key=value` pairs, numbers shortened."""
    return " ".join(
        f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
        for k, v in sorted(config.items())
    )


class TrialCloser(Callback):
    """Ends child runs the trial itself could not end, reports progress, and backs up the experiment state."""

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        note_finished({t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")})

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        sweep = _ACTIVE
        if sweep is None or time.monotonic() - sweep.last_backup < BACKUP_PERIOD_S:
            return
        sweep.last_backup = time.monotonic()
        try:
            backup_state(sweep.exp_dir, sweep.backup_dir)
        except OSError as exc:
            print(f"auxray: could not back up the sweep state: {exc}", file=sys.stderr, flush=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        sweep = _ACTIVE
        if sweep is not None:
            sweep.last_backup = 0.0
            self.on_step_end(0, trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._closed(trial, error=None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._closed(trial, error=_error_text(trial))

    def _closed(self, trial: Any, error: str | None) -> None:
        sweep = _ACTIVE
        if sweep is None:
            return
        result = trial.last_result or {}
        epoch = int(result.get("epoch", 0) or 0)
        stopped = error is None and epoch < sweep.epochs
        close_child(
            sweep.uri,
            sweep.parent_id,
            trial.trial_id,
            status="FAILED" if error else "FINISHED",
            stopped_early=stopped,
            error=error,
        )
        sweep.done += 1
        if not sweep.progress:
            return
        if error:
            state = f"FAILED: {error}"
        else:
            val = result.get("best_val_accuracy", result.get("val_accuracy"))
            state = f"best val {val:.4f}" if isinstance(val, (int, float)) else "no result"
            if "test_accuracy" in result:
                state += f"  test {result['test_accuracy']:.4f}"
            if stopped:
                state += "  (stopped early)"
        print(
            f"trial {trial.trial_id} [{sweep.done}/{sweep.trials}] epochs {epoch}/{sweep.epochs}  {state}  "
            f"{format_params(trial.config)}",
            file=sys.stderr,
            flush=True,
        )


def _error_text(trial: Any) -> str:
    """The first line of a trial's error file, or a generic note."""
    path = getattr(trial, "error_file", None) or ""
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
        return (lines[-1] if lines else "trial failed")[:300]
    except OSError:
        return "trial failed"
