"""What each Ray Train worker runs: the unchanged BilevelTrainer with a torch.distributed Collective,
the coordinator as its phi updater, and Ray Train checkpoints as its checkpoints."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch

from auxray.config import RunConfig
from auxray.data import build_data
from auxray.train.checkpoint import LATEST, load_checkpoint, save_checkpoint
from auxray.train.coordinator import RemotePhiUpdater
from auxray.train.loop import BilevelTrainer
from auxray.train.ray_collective import TorchDistributedCollective
from auxray.train.run import format_metrics


def _device(gpus_per_worker: float) -> torch.device:
    if gpus_per_worker > 0 and torch.cuda.is_available():
        return ray.train.torch.get_device()
    return torch.device("cpu")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: config holds the RunConfig as a dict and the coordinator's actor name."""
    cfg = RunConfig.model_validate(config["cfg"])
    device = _device(cfg.scaling.gpus_per_worker)
    cfg.trainer.device = str(device)
    cpus = int(config.get("cpus_per_worker", 1))
    cfg.trainer.threads = cfg.trainer.threads or max(1, cpus)
    collective = TorchDistributedCollective(device)
    coordinator = ray.get_actor(config["coordinator"], namespace=config["namespace"])
    rank = collective.rank

    def make_updater(auxnet: torch.nn.Module) -> RemotePhiUpdater:
        return RemotePhiUpdater(coordinator, auxnet, rank, collective.barrier)

    def report(trainer: BilevelTrainer, metrics: dict[str, Any]) -> None:
        metrics = {**metrics, "allreduce_bytes": collective.bytes_sent}
        if rank == 0:
            print(format_metrics(metrics, cfg.trainer.epochs), flush=True)
        due = trainer.epoch % cfg.trainer.checkpoint_every == 0 or trainer.epoch == cfg.trainer.epochs
        report_with_state(trainer, metrics, rank == 0 and due, f"epoch_{trainer.epoch:05d}")

    data = build_data(cfg.data)
    trainer = BilevelTrainer(cfg, data, collective=collective, phi_updater=make_updater, callbacks=[report],
                             progress=False)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load_state_dict(load_checkpoint(Path(d) / LATEST))
        if rank == 0:
            print(f"restored from checkpoint at epoch {trainer.epoch} (step {trainer.step})", flush=True)
    elif trainer.phi is not None:
        if rank == 0:
            ray.get(coordinator.initialise.remote([p.detach().cpu() for p in trainer.phi.params]))
        collective.barrier()
    fault = config.get("fault")
    if fault:
        _arm_fault(fault, trainer, rank, coordinator)
    trainer.fit()
    test = trainer.test(best=True)
    final = {f"test_{k}": v for k, v in test.items()}
    final.update({"epoch": trainer.epoch, "step": trainer.step, "done": 1, "allreduce_bytes": collective.bytes_sent,
                  "best_val_accuracy": trainer.best["val_accuracy"], "best_epoch": trainer.best["epoch"],
                  "phi_bytes_sent": getattr(trainer.phi, "bytes_sent", 0)})
    # The final report carries the final state too: Ray Train keeps the metrics that come with a
    # checkpoint, so this is what Result.metrics holds at the end.
    report_with_state(trainer, final, rank == 0, "final")


def report_with_state(trainer: BilevelTrainer, metrics: dict[str, Any], with_state: bool, dir_name: str) -> None:
    """ray.train.report on every rank (it is a barrier); the rank that passes with_state attaches
    the trainer's full state as a checkpoint."""
    if not with_state:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(trainer.state_dict(), Path(tmp) / LATEST)
        (Path(tmp) / "metrics.json").write_text(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=dir_name)


def _arm_fault(fault: dict[str, Any], trainer: BilevelTrainer, rank: int, coordinator: Any) -> None:
    """Test hook: kill this worker process (or the coordinator) once, after a given epoch.
    A marker file makes the fault fire only on the first attempt."""
    marker = Path(fault["marker"])

    def maybe_fail(t: BilevelTrainer, metrics: dict[str, Any]) -> None:
        if t.epoch != fault["after_epoch"] or marker.exists() or rank != fault.get("rank", 0):
            return
        marker.write_text("fired")
        if fault["target"] == "coordinator":
            ray.kill(coordinator, no_restart=False)
        else:
            os._exit(1)

    trainer.callbacks.append(maybe_fail)
