"""Driver of a data-parallel run: joins or starts Ray, creates the run's coordinator actor, runs a
Ray Train TorchTrainer over train_loop_per_worker and turns its Result into the run summary."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from auxray.config import RunConfig
from auxray.data import build_data
from auxray.errors import UserError
from auxray.train.checkpoint import LATEST, load_checkpoint

LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024

# Ray reads this when it is imported: workers then run this interpreter directly instead of Ray's
# `uv run` hook re-creating the virtual environment in a copy of the working directory (cluster
# images already hold the locked environment, see deploy/Dockerfile).
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def ensure_ray(address: str | None, *, num_cpus: int | None = None) -> None:
    """Connect to the cluster named by `address` or RAY_ADDRESS, else start a small local instance."""
    import ray

    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS")
    try:
        if target:
            ray.init(address=target, log_to_driver=True)
        else:
            # The dashboard stays on (Ray Train's state API needs it), bound to loopback only.
            ray.init(num_cpus=num_cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=True,
                     dashboard_host="127.0.0.1", log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(f"cannot reach the Ray cluster at {target or 'a new local instance'}: "
                        f"{str(err).splitlines()[0]}") from None


def with_local_paths(cfg: RunConfig) -> RunConfig:
    """Make data and cache paths that exist here absolute, since Ray workers run in other directories."""
    cfg = cfg.model_copy(deep=True)
    for key in ("root", "cache_dir"):
        value = getattr(cfg.data, key)
        if value and not Path(value).is_absolute() and Path(value).exists():
            setattr(cfg.data, key, str(Path(value).resolve()))
    return cfg


def _storage_root(cfg: RunConfig) -> Path:
    return (Path(cfg.trainer.checkpoint_dir) if cfg.trainer.checkpoint_dir else Path("runs")).resolve() / "ray"


def _run_name(storage: Path, name: str, resume: bool) -> str:
    """A fresh timestamped name, or with resume the newest earlier run of `name` (Ray Train restores
    a run from its latest checkpoint when it is started again under the same name and storage path)."""
    if resume:
        earlier = sorted(p.name for p in storage.glob(f"{name}-*") if p.is_dir())
        if not earlier:
            raise UserError(f"nothing to resume: no Ray Train run of {name!r} under {storage}")
        return earlier[-1]
    return f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"


def run_distributed(
    cfg: RunConfig,
    *,
    name: str,
    resume: bool = False,
    progress: bool = True,
    fault: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train cfg on cfg.scaling.workers Ray Train workers (DDP, gloo or NCCL) with a coordinator actor."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig as TrainRunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from auxray.train.coordinator import Coordinator
    from auxray.train.ray_worker import train_loop_per_worker

    t0 = time.perf_counter()
    cfg = with_local_paths(cfg)
    build_data(cfg.data)  # fail fast, with one line, on a bad data path before any Ray resources are spent
    s = cfg.scaling
    local_cpus = max(os.cpu_count() or 1, s.workers)
    ensure_ray(s.address, num_cpus=local_cpus)
    storage = _storage_root(cfg)
    run_name = _run_name(storage, name, resume)
    namespace = ray.get_runtime_context().namespace
    coordinator = (
        ray.remote(Coordinator)
        .options(name=f"auxray-coordinator-{run_name}", namespace=namespace, num_cpus=0, num_gpus=0,
                 max_restarts=s.max_failures, get_if_exists=True)
        .remote(cfg.method.model_dump())
    )
    ray.get(coordinator.ping.remote())
    cpus_per_worker = max(1, int(ray.cluster_resources().get("CPU", s.workers)) // s.workers)
    use_gpu = s.gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker, **({"GPU": s.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(), "coordinator": f"auxray-coordinator-{run_name}",
                           "namespace": namespace, "cpus_per_worker": cpus_per_worker, "fault": fault},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=s.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=TrainRunConfig(
            name=run_name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as err:  # Ray Train raises its own TrainingFailedError subclasses
        raise UserError(f"distributed run {run_name} failed after {s.max_failures} retries: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    finally:
        ray.kill(coordinator)
    return summarise_result(cfg, result, run_name, storage, time.perf_counter() - t0)


def summarise_result(cfg: RunConfig, result: Any, run_name: str, storage: Path, seconds: float) -> dict[str, Any]:
    """The run summary from Ray Train's Result: final metrics plus the history held in the last checkpoint."""
    metrics = dict(result.metrics or {})
    history: list[dict[str, Any]] = []
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            state = load_checkpoint(Path(d) / LATEST)
            history = state["history"]
    out: dict[str, Any] = {"method": cfg.method.name, "workers": cfg.scaling.workers, "epochs": metrics.get("epoch"),
                           "steps": metrics.get("step")}
    for key in ("test_accuracy", "test_mse", "best_val_accuracy", "best_epoch", "allreduce_bytes", "phi_bytes_sent"):
        if key in metrics:
            out[key] = metrics[key]
    out["seconds"] = seconds
    out["run_dir"] = str(storage / run_name)
    out["checkpoint"] = result.checkpoint.path if result.checkpoint is not None else None
    out["history"] = history
    return out
