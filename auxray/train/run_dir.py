"""A run's folder: its name (fresh, or the newest earlier one to resume), and the sink that keeps its files:
config.json, metrics.jsonl, latest.pt every `checkpoint_every` epochs and best.pt when validation improves."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from auxray.config import RunConfig
from auxray.errors import UserError
from auxray.train.checkpoint import BEST, LATEST, save_checkpoint
from auxray.train.session import RunView, Summary

METRICS = "metrics.jsonl"
RAY_DIR = "ray"  # Ray Train's storage under the checkpoint folder; every node must reach it on a real cluster
Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    """Default log: one line on stderr (stdout stays clean for --json)."""
    print(message, file=sys.stderr, flush=True)


def run_name(base: Path, name: str, *, resume: bool, done: Callable[[Path], bool]) -> str:
    """A fresh timestamped name `<name>/<stamp>`, or with resume the newest earlier run of `name` under base for
    which `done(folder)` says it can be resumed."""
    if resume:
        root = base / name
        earlier = sorted(d for d in root.iterdir() if d.is_dir() and done(d)) if root.is_dir() else []
        if not earlier:
            raise UserError(f"nothing to resume: no checkpoint of {name!r} under {root}")
        return f"{name}/{earlier[-1].name}"
    return f"{name}/{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"


def has_latest(folder: Path) -> bool:
    """True when folder holds a single-process checkpoint to resume from."""
    return (folder / LATEST).is_file()


def ray_train_name(folder: Path) -> str:
    """Ray Train's run name for a run folder `<name>/<stamp>` (its storage is flat)."""
    return "-".join(folder.parts)


def resumable(base: Path, *, distributed: bool) -> Callable[[Path], bool]:
    """`run_name`'s test of an earlier run folder under base: a latest.pt, or Ray Train's storage of that run."""
    if not distributed:
        return has_latest
    return lambda folder: (base / RAY_DIR / ray_train_name(folder.relative_to(base))).is_dir()


def format_metrics(metrics: dict[str, Any], epochs: int) -> str:
    """A compact one-line summary of an epoch's metrics."""
    keys = ["train_loss", "train_accuracy", "val_accuracy", "val_mse", "hypergrad_norm"]
    parts = [f"epoch {metrics['epoch']}/{epochs}"]
    parts += [f"{k} {metrics[k]:.4g}" for k in keys if k in metrics]
    parts += [f"{k} {v:.3g}" for k, v in metrics.items() if k.startswith("task_weight/")]
    parts.append(f"({metrics.get('epoch_seconds', 0):.1f}s)")
    return "  ".join(parts)


class LogSink:
    """One line per epoch (rank 0)."""

    def __init__(self, log: Log = stderr_log) -> None:
        self.log = log

    def epoch(self, view: RunView, metrics: dict[str, Any], summary: Summary | None) -> None:
        if view.rank == 0:
            self.log(format_metrics(metrics, view.epochs))


class RunDir:
    """Session sink keeping a run's files in one folder (rank 0 only): config.json, metrics.jsonl and best.pt. The
    resumable state is another sink's (LatestCheckpoint here, Ray Train's or Tune's checkpoints), placed after
    every other sink: a checkpoint is the point a run resumes from, so what an epoch logs is out before it."""

    def __init__(self, path: Path, cfg: RunConfig) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.json").write_text(cfg.model_dump_json(indent=2))
        self.best_epoch = -1
        self.synced = False  # metrics.jsonl rewritten from the run's history (once per process)

    def epoch(self, view: RunView, metrics: dict[str, Any], summary: Summary | None) -> None:
        if view.rank != 0:
            return
        # The first epoch of this process rewrites the file from the history the run continues from, so that
        # epochs logged after the checkpoint it was restored from (then trained again) are not listed twice.
        lines = [metrics] if self.synced else view.history
        with open(self.path / METRICS, "a" if self.synced else "w") as f:
            f.writelines(json.dumps(m) + "\n" for m in lines)
        self.synced = True
        best = view.best()
        if best["epoch"] != self.best_epoch:
            self.best_epoch = best["epoch"]
            save_checkpoint(best, self.path / BEST)


class LatestCheckpoint:
    """Session sink writing a single-process run's resumable state to latest.pt every `checkpoint_every` epochs
    and after the last one; the last sink of the session."""

    def __init__(self, path: Path, cfg: RunConfig) -> None:
        self.path, self.every = Path(path) / LATEST, cfg.trainer.checkpoint_every

    def epoch(self, view: RunView, metrics: dict[str, Any], summary: Summary | None) -> None:
        if view.rank == 0 and (view.epoch % self.every == 0 or view.done):
            save_checkpoint(view.state(), self.path)
