"""What each Ray Train worker runs: the training session with a torch.distributed Collective, the coordinator
as its phi updater, Ray Train checkpoints as its resumable state and, on rank 0, the run's other sinks."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from auxray.train.checkpoint import LATEST, load_checkpoint, save_checkpoint
from auxray.train.coordinator import RemotePhiUpdater
from auxray.train.ray_collective import TorchDistributedCollective
from auxray.train.run_dir import LogSink, RunDir
from auxray.train.run_plan import RunPlan
from auxray.train.session import RunView, Sink, Summary, build_trainer, run_session


def _device(gpus_per_worker: float) -> torch.device:
    if gpus_per_worker > 0 and torch.cuda.is_available():
        return ray.train.torch.get_device()
    return torch.device("cpu")


class RayTrainReport:
    """Sink on every rank: ray.train.report per epoch (a barrier); the rank that holds the state attaches it as a
    checkpoint when due, and the final report carries the summary, so Result.metrics holds it."""

    def __init__(self, every: int) -> None:
        self.every = every

    def epoch(self, view: RunView, metrics: dict[str, Any], summary: Summary | None) -> None:
        out = dict(metrics)
        if summary is not None:
            out.update({k: v for k, v in summary.items() if k != "run_dir"})
        due = view.epoch % self.every == 0 or view.done
        if view.rank != 0 or not due:
            ray.train.report(out, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(view.state(), Path(tmp) / LATEST)
            ray.train.report(
                out, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=f"epoch_{view.epoch:05d}"
            )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: config holds the run's plan, the coordinator's actor name and the rank-0 sink
    factories."""
    plan: RunPlan = config["plan"]
    cfg = plan.cfg
    device = _device(cfg.scaling.gpus_per_worker)
    cfg.trainer.device = str(device)
    cfg.trainer.threads = cfg.trainer.threads or max(1, int(config["cpus_per_worker"]))
    collective = TorchDistributedCollective(device)
    coordinator = ray.get_actor(config["coordinator"], namespace=config["namespace"])
    rank = collective.rank

    def make_updater(auxnet: torch.nn.Module) -> RemotePhiUpdater:
        return RemotePhiUpdater(coordinator, auxnet, rank, collective.barrier)

    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(Path(d) / LATEST)
    trainer = build_trainer(plan, state=state, collective=collective, phi_updater=make_updater)
    if checkpoint is not None:
        if rank == 0:
            print(f"restored from checkpoint at epoch {trainer.epoch} (step {trainer.step})", flush=True)
    elif trainer.phi is not None:
        if rank == 0:
            ray.get(coordinator.initialise.remote([p.detach().cpu() for p in trainer.phi.params]))
        collective.barrier()
    sinks: list[Sink] = []
    if rank == 0:
        sinks = [
            LogSink(lambda line: print(line, flush=True)),
            RunDir(plan.run_dir, cfg),
            *(open_sink() for open_sink in config["sinks"]),
        ]
    sinks.append(RayTrainReport(cfg.trainer.checkpoint_every))
    sinks += [FaultInjector(fault, coordinator) for fault in config["faults"]]
    run_session(trainer, sinks, run_dir=plan.run_dir)


class FaultInjector:
    """Test hook, the last sink: kill this worker process (or the coordinator) once, after a given epoch's report.
    A marker file makes the fault fire only on the first attempt."""

    def __init__(self, fault: dict[str, Any], coordinator: Any) -> None:
        self.fault, self.coordinator = fault, coordinator
        self.marker = Path(fault["marker"])

    def epoch(self, view: RunView, metrics: dict[str, Any], summary: Summary | None) -> None:
        if view.epoch != self.fault["after_epoch"] or self.marker.exists() or view.rank != self.fault.get("rank", 0):
            return
        self.marker.write_text("fired")
        # Ray Train's controller collects each worker's report (and registers the checkpoint) when it polls the
        # workers, every health-check interval: a worker dying sooner would take the epoch's checkpoint with it.
        time.sleep(2.5 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")))  # Ray's default: 2 s
        if self.fault["target"] == "coordinator":
            ray.kill(self.coordinator, no_restart=False)
        else:
            os._exit(1)
