"""One complete single-process run: data, trainer, per-epoch log, checkpoints, resume, final test."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

from auxray.config import RunConfig
from auxray.data import build_data
from auxray.errors import UserError
from auxray.train.checkpoint import BEST, LATEST, latest_in, load_checkpoint, save_checkpoint
from auxray.train.loop import BilevelTrainer, EpochCallback

Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    """Default log sink: one line on stderr (stdout stays clean for --json)."""
    print(message, file=sys.stderr, flush=True)


def format_metrics(metrics: dict[str, Any], epochs: int) -> str:
    """A compact one-line summary of an epoch's metrics."""
    keys = ["train_loss", "train_accuracy", "val_accuracy", "val_mse", "hypergrad_norm"]
    parts = [f"epoch {metrics['epoch']}/{epochs}"]
    parts += [f"{k} {metrics[k]:.4g}" for k in keys if k in metrics]
    parts += [f"{k} {v:.3g}" for k, v in metrics.items() if k.startswith("task_weight/")]
    parts.append(f"({metrics.get('epoch_seconds', 0):.1f}s)")
    return "  ".join(parts)


def new_run_dir(base: str | Path, name: str) -> Path:
    """A fresh, timestamped directory for a run, so earlier runs' files are never overwritten."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = Path(base) / name / stamp
    path.mkdir(parents=True, exist_ok=False)
    return path


def newest_run_dir(base: str | Path, name: str) -> Path | None:
    """The most recent run directory of `name` that holds a checkpoint."""
    root = Path(base) / name
    if not root.is_dir():
        return None
    dirs = sorted(d for d in root.iterdir() if latest_in(d) is not None)
    return dirs[-1] if dirs else None


class Checkpointer:
    """Epoch callback: writes latest.pt every `every` epochs and best.pt when validation improves,
    and appends the epoch's metrics to metrics.jsonl."""

    def __init__(self, run_dir: Path, every: int) -> None:
        self.run_dir, self.every = run_dir, every
        self.best_epoch = -1

    def __call__(self, trainer: BilevelTrainer, metrics: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if trainer.epoch % self.every == 0 or trainer.epoch == trainer.cfg.trainer.epochs:
            save_checkpoint(trainer.state_dict(), self.run_dir / LATEST)
        if trainer.best["epoch"] != self.best_epoch:
            self.best_epoch = trainer.best["epoch"]
            save_checkpoint({"model": trainer.best["state"], "epoch": self.best_epoch,
                             "auxnet": trainer.auxnet.state_dict() if trainer.auxnet is not None else None,
                             "config": trainer.cfg.model_dump()}, self.run_dir / BEST)


def run_training(
    cfg: RunConfig,
    *,
    name: str,
    resume: bool = False,
    runs_root: str | Path = "runs",
    callbacks: Sequence[EpochCallback] = (),
    progress: bool = True,
    log: Log = stderr_log,
    until_epoch: int | None = None,
) -> dict[str, Any]:
    """Train cfg in this process and return the final summary (test accuracy of the best-on-validation
    weights, timings, run directory)."""
    t0 = time.perf_counter()
    data = build_data(cfg.data)
    base = Path(cfg.trainer.checkpoint_dir) if cfg.trainer.checkpoint_dir else Path(runs_root)
    run_dir = newest_run_dir(base, name) if resume else None
    if resume and run_dir is None:
        raise UserError(f"nothing to resume: no checkpoint under {base / name}")
    run_dir = run_dir or new_run_dir(base, name)
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))

    def epoch_log(trainer: BilevelTrainer, metrics: dict[str, Any]) -> None:
        log(format_metrics(metrics, cfg.trainer.epochs))

    trainer = BilevelTrainer(cfg, data, callbacks=[epoch_log, Checkpointer(run_dir, cfg.trainer.checkpoint_every),
                                                   *callbacks], progress=progress)
    if resume:
        trainer.load_state_dict(load_checkpoint(run_dir / LATEST))
        log(f"resumed {run_dir} at epoch {trainer.epoch} (step {trainer.step})")
    log(f"{cfg.method.name}: {len(data.train)} train / {len(data.aux)} aux / {len(data.val)} val / "
        f"{len(data.test)} test, {trainer.steps_per_epoch} steps per epoch, run dir {run_dir}")
    trainer.fit(until_epoch)
    return summarise(trainer, run_dir, time.perf_counter() - t0)


def summarise(trainer: BilevelTrainer, run_dir: Path | None, seconds: float) -> dict[str, Any]:
    """Final test metrics and bookkeeping for a finished (or stopped) run."""
    result: dict[str, Any] = {"method": trainer.cfg.method.name, "epochs": trainer.epoch, "steps": trainer.step}
    if trainer.epoch == trainer.cfg.trainer.epochs:
        test = trainer.test(best=True)
        final = trainer.test(best=False)
        if "accuracy" in test:
            result["test_accuracy"] = test["accuracy"]
            result["final_test_accuracy"] = final["accuracy"]
        else:
            result["test_mse"] = test["mse"]
            result["final_test_mse"] = final["mse"]
    if trainer.data.task == "regression":
        result["best_val_mse"] = -trainer.best["val_accuracy"]  # the score is negated MSE: higher is better
    else:
        result["best_val_accuracy"] = trainer.best["val_accuracy"]
    result["best_epoch"] = trainer.best["epoch"]
    result["seconds"] = seconds
    result["run_dir"] = str(run_dir) if run_dir else None
    return result
