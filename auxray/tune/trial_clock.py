"""Where a sweep trial's wall time goes: the moments one attempt of a trial passes (its process started, the
trial entered, its MLflow child run opened, its trainer built, its training ended), one JSON line per attempt in
the trial's own files folder (``timing.jsonl``). ``auxray bench trial-cost`` reads them to split a trial's time
into the fixed cost (process start and imports, tracking, data and model set-up, evaluation and reports) and the
training itself; a process Tune reused for the next trial (``reuse_actors``) shows as one that started before it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from auxray.train.session import RunView, Summary

TIMING_FILE = "timing.jsonl"
MARKS = ("entered", "child_run", "trainer", "trained")


def process_start_time(pid: int | None = None) -> float | None:
    """The wall-clock time a process started, from Linux's /proc (None elsewhere). Neither Ray nor the standard
    library reports it without psutil, which auxray does not otherwise need; /proc is where psutil reads it."""
    try:
        stat = Path(f"/proc/{pid or os.getpid()}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime: clock ticks after boot
    return float(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")


class TrialClock:
    """The moments of one trial attempt, marked in order; as the session's sink before the final Tune report
    (after which Tune may end the process), it marks "trained" and appends the attempt's line."""

    def __init__(self, trial_dir: Path) -> None:
        self.path = trial_dir / TIMING_FILE
        self.record: dict[str, Any] = {"pid": os.getpid(), "process_start": process_start_time()}
        self.start_epoch = 0
        self.mark("entered")

    def mark(self, name: str) -> None:
        """Note that the attempt reached `name` (one of MARKS) now."""
        self.record[name] = time.time()

    def epoch(self, view: RunView, metrics: dict[str, Any], summary: Summary | None) -> None:
        if summary is None:
            return
        self.mark("trained")
        with open(self.path, "a") as f:
            f.write(json.dumps({**self.record, "start_epoch": self.start_epoch, "epochs": view.epoch}) + "\n")


def read_timings(trial_dir: Path) -> list[dict[str, Any]]:
    """Every attempt's line of a trial, oldest first ([] when it wrote none)."""
    path = trial_dir / TIMING_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
