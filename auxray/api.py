"""The public Python API. `fit` trains without YAML: a config mapping (or RunConfig) and, optionally, your own
backbone and auxiliary task as plain callables. `MetaOptimizer` is the drop-in outer optimizer for your own
training loop. Everything else in the package is internal and may change."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from auxray.config import RunConfig, config_from_dict
from auxray.hypergrad import MetaOptimizer, cg_solver, exact_solver, neumann_solver
from auxray.importpath import resolve_callable
from auxray.methods.aux_tasks import AuxiliaryTask, LossFnTask
from auxray.tracking.training import train_tracked
from auxray.train.run_plan import plan_run
from auxray.train.session import Summary

__all__ = [
    "AuxiliaryTask",
    "LossFnTask",
    "MetaOptimizer",
    "RunConfig",
    "cg_solver",
    "exact_solver",
    "fit",
    "neumann_solver",
    "run_config",
]


def import_path_of(obj: Callable[..., Any], what: str) -> str:
    """The ``"module:qualname"`` path of a module-level callable, checked to import back to the same object (a
    config holds names, not objects, so that checkpoints, MLflow and Ray workers can record and rebuild it)."""
    path = f"{obj.__module__}:{obj.__qualname__}"
    try:
        same = resolve_callable(path) is obj
    except ValueError:
        same = False
    if not same:
        raise ValueError(
            f"{what} {obj!r} must be a function or class defined at the top level of a module "
            f"(it is looked up again as {path!r})"
        )
    return path


def run_config(
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    backbone: Callable[..., Any] | None = None,
    aux_task: Callable[[str], AuxiliaryTask] | None = None,
) -> RunConfig:
    """A validated RunConfig from a mapping (same keys as the YAML files) or a RunConfig, with `backbone`
    (``factory(in_channels=, width=, in_features=) -> (trunk, feat_dim)``) and `aux_task`
    (``factory(task) -> AuxiliaryTask``, e.g. a LossFnTask) given as callables."""
    raw = config.model_dump(mode="json") if isinstance(config, RunConfig) else dict(config or {})
    raw = {key: dict(value) if isinstance(value, Mapping) else value for key, value in raw.items()}
    if backbone is not None:
        raw.setdefault("model", {})["backbone"] = import_path_of(backbone, "backbone")
    if aux_task is not None:
        raw.setdefault("method", {})["aux_task"] = import_path_of(aux_task, "aux_task")
    return config_from_dict(raw, "the config given to auxray.api")


def fit(
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    backbone: Callable[..., Any] | None = None,
    aux_task: Callable[[str], AuxiliaryTask] | None = None,
    name: str = "run",
    tracking_uri: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Summary:
    """Train a config as `auxray train` does (one process, or Ray Train when it asks for workers; tracked in
    MLflow unless tracking.enabled is false) and return the run's summary: test accuracy of the best-on-validation
    weights, the run folder, the MLflow run id."""
    plan = plan_run(run_config(config, backbone=backbone, aux_task=aux_task), name=name, resume=resume)
    return train_tracked(plan, tracking_uri=tracking_uri, progress=progress)
