"""A trial's record: what a table built from a grid sweep needs of one finished trial (its parameters, the run
summary, wall seconds including the epochs before a restore, and the run's diagnostics), written as one JSON
file in the trial's own files folder when its last epoch ends."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the record's readers (the bench's table builders, the CLI's parsers) import no torch
    from auxray.train.loop import BilevelTrainer
    from auxray.train.session import RunView, Summary

RECORD_FILE = "record.json"


class TrialRecord:
    """Session sink writing `record.json` after the last epoch. Seconds count this attempt's wall time plus
    the epoch time of the epochs an earlier attempt ran (a restored trial's start-up is not counted twice)."""

    def __init__(self, trainer: BilevelTrainer, trial_dir: Path, params: dict[str, Any]) -> None:
        self.path = trial_dir / RECORD_FILE
        self.params = dict(params)
        self.start_epoch = trainer.epoch
        self.earlier_seconds = sum(h.get("epoch_seconds", 0.0) for h in trainer.history[: trainer.epoch])

    def epoch(self, view: RunView, metrics: dict[str, Any], summary: Summary | None) -> None:
        if summary is None:
            return
        from auxray.train.run_diagnostics import run_diagnostics  # torch: only in a trial, not in the readers

        record = {
            "params": self.params,
            "summary": {**summary, "seconds": summary["seconds"] + self.earlier_seconds},
            "resumed_from_epoch": self.start_epoch or None,
            "diagnostics": run_diagnostics(view, metrics),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(self.path, record)


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (a temporary file renamed over the target), so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, default=float, indent=1) + "\n")
    os.replace(tmp, path)


def recorded_result(trial_dir: Path, params: dict[str, Any]) -> dict[str, float] | None:
    """The final Tune report of a trial that already wrote its record with these parameters (it finished, but
    the driver died before Tune saved that), so a restored trial reports it again instead of training again."""
    record = read_record(trial_dir)
    if record is None or record["params"] != params:
        return None
    summary = record["summary"]
    result = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    result.update(epoch=summary["epochs"], val_accuracy=summary.get("best_val_accuracy", 0.0))
    return result


def read_record(trial_dir: Path) -> dict[str, Any] | None:
    """A trial's record, or None when it has not finished."""
    path = trial_dir / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None
