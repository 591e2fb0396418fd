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
from auxray.train.checkpoint import BEST, LATEST, load_checkpoint, save_checkpoint
from auxray.train.session import RunView, Summary

METRICS = "metrics.jsonl"
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
    """Session sink keeping a run's files in one folder (rank 0 only). `latest=False` leaves the resumable
    state to another sink (Ray Train or Tune checkpoints) and keeps only best.pt and the metrics."""

    def __init__(self, path: Path, cfg: RunConfig, *, latest: bool = True) -> None:
        self.path, self.every, self.latest = Path(path), cfg.trainer.checkpoint_every, latest
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.json").write_text(cfg.model_dump_json(indent=2))
        self.best_epoch = -1

    def restore(self) -> dict[str, Any] | None:
        """The state in latest.pt, if there is one."""
        return load_checkpoint(self.path / LATEST) if has_latest(self.path) else None

    def epoch(self, view: RunView, metrics: dict[str, Any], summary: Summary | None) -> None:
        if view.rank != 0:
            return
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.latest and (view.epoch % self.every == 0 or view.done):
            save_checkpoint(view.state(), self.path / LATEST)
        best = view.best()
        if best["epoch"] != self.best_epoch:
            self.best_epoch = best["epoch"]
            save_checkpoint(best, self.path / BEST)
