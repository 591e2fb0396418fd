"""Driver of a data-parallel run: joins or starts Ray, creates the run's coordinator actor, runs a Ray Train
TorchTrainer over the training session on every worker and returns the session's summary."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
from ray.train import RunConfig as TrainRunConfig
from ray.train.torch import TorchConfig, TorchTrainer

from auxray.config import RunConfig
from auxray.errors import UserError
from auxray.train.checkpoint import LATEST, load_checkpoint
from auxray.train.coordinator import Coordinator
from auxray.train.ray_cluster import ensure_ray
from auxray.train.ray_worker import train_loop_per_worker
from auxray.train.run_plan import RunPlan
from auxray.train.session import SinkFactory, Summary


def run_distributed(
    plan: RunPlan,
    *,
    sinks: Sequence[SinkFactory] = (),
    progress: bool = True,
    faults: Sequence[dict[str, Any]] = (),
) -> Summary:
    """Train a planned run on cfg.scaling.workers Ray Train workers (DDP, gloo or NCCL) with a coordinator actor.
    Ray Train restores a run whose storage already holds checkpoints (a resumed one) from the latest of them."""
    t0 = time.perf_counter()
    cfg = plan.cfg
    s = cfg.scaling
    ensure_ray(s.address, num_cpus=max(os.cpu_count() or 1, s.workers))
    run_id = plan.ray_name
    namespace = ray.get_runtime_context().namespace
    actor = f"auxray-coordinator-{run_id}"
    coordinator: Any = (  # an actor handle: Ray's stubs do not type its remote methods
        ray.remote(Coordinator)
        .options(
            name=actor, namespace=namespace, num_cpus=0, num_gpus=0, max_restarts=s.max_failures, get_if_exists=True
        )
        .remote(cfg.outer.model_dump())
    )
    ray.get(coordinator.ping.remote())
    cpus_per_worker = max(1, int(ray.cluster_resources().get("CPU", s.workers)) // s.workers)
    use_gpu = s.gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker, **({"GPU": s.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "plan": plan,
            "coordinator": actor,
            "namespace": namespace,
            "cpus_per_worker": cpus_per_worker,
            "sinks": list(sinks),
            "faults": list(faults),
        },
        torch_config=TorchConfig(backend=collective_backend(s.gpus_per_worker)),
        scaling_config=ScalingConfig(num_workers=s.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=TrainRunConfig(
            name=run_id,
            storage_path=str(plan.ray_storage),
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as err:  # Ray Train raises its own TrainingFailedError subclasses
        raise UserError(
            f"distributed run {run_id} failed after {s.max_failures} retries: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    finally:
        ray.kill(coordinator)
    return _summary(cfg, result, plan.run_dir, time.perf_counter() - t0)


def collective_backend(gpus_per_worker: float) -> str:
    """NCCL for workers with whole GPUs; gloo on the CPU and for fractional GPUs, where several workers share one
    device, which NCCL refuses (one rank per device) and gloo all-reduces as CUDA tensors."""
    return "nccl" if gpus_per_worker >= 1 else "gloo"


def _summary(cfg: RunConfig, result: Any, run_dir: Path, seconds: float) -> Summary:
    """The session's summary as the final report carried it, plus what only the driver knows: workers, wall
    time, where the checkpoint is, and the per-epoch history held in it."""
    metrics = dict(result.metrics or {})
    history: list[dict[str, Any]] = []
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            history = load_checkpoint(Path(d) / LATEST)["history"]
    keys = (
        "method",
        "epochs",
        "steps",
        "test_accuracy",
        "final_test_accuracy",
        "test_mse",
        "final_test_mse",
        "best_val_accuracy",
        "best_val_mse",
        "best_epoch",
        "resumed_from",
        "allreduce_bytes",
        "phi_bytes_sent",
    )
    out: Summary = {k: metrics[k] for k in keys if k in metrics}
    out.update(
        workers=cfg.scaling.workers,
        seconds=seconds,
        run_dir=str(run_dir),
        checkpoint=result.checkpoint.path if result.checkpoint is not None else None,
        history=history,
    )
    return out
