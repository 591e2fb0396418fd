"""Where a run's files live. The one place that makes configured paths absolute, and that knows a Ray job runs
in a temporary copy of the submitted directory, where relative paths neither find inputs outside it nor keep
outputs after the job."""

from __future__ import annotations

import os
from pathlib import Path

from auxray.config import RunConfig
from auxray.errors import UserError

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for every submitted job's entrypoint
STORAGE_ENV = "AUXRAY_STORAGE"
JOB_STORAGE_DEFAULT = "~/auxray"
RUNS_DIR = "runs"


def in_ray_job() -> bool:
    """True inside a `ray job submit` entrypoint (its working directory is a temporary upload)."""
    return JOB_ENV in os.environ


def storage_root(cwd: Path | None = None) -> Path:
    """Base of relative output paths: $AUXRAY_STORAGE; else ~/auxray on the node running a Ray job; else the
    working directory (`cwd`, default the process's)."""
    chosen = os.environ.get(STORAGE_ENV) or (JOB_STORAGE_DEFAULT if in_ray_job() else None)
    return Path(chosen).expanduser().resolve() if chosen else (cwd or Path.cwd()).resolve()


def output_path(path: str | None, default: str = RUNS_DIR, cwd: Path | None = None) -> Path:
    """An output path made absolute against storage_root (absolute paths are kept)."""
    p = Path(path or default).expanduser()
    return p if p.is_absolute() else storage_root(cwd) / p


def input_path(path: str, key: str, cwd: Path | None = None) -> Path:
    """An input path made absolute against the working directory (`cwd`); inside a Ray job a relative path that
    does not exist in the uploaded copy is one clear error naming the key to set."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p.resolve()
    p = (cwd or Path.cwd()) / p
    if in_ray_job() and not p.exists():
        raise UserError(
            f"{key} {path!r} is relative and does not exist in the job's temporary working copy; "
            f"give an absolute path on the cluster (--set {key}=/absolute/path)"
        )
    return p.resolve()


def absolute_paths(cfg: RunConfig, cwd: Path | None = None) -> RunConfig:
    """A copy of cfg whose data, cache and checkpoint paths are absolute (resolved from `cwd`, default the
    working directory), so that Ray workers and Tune trials, which run in other directories, find the same files."""
    cfg = cfg.model_copy(deep=True)
    cfg.data.root = str(input_path(cfg.data.root, "data.root", cwd))
    if cfg.data.pool_path is not None:
        cfg.data.unlabeled = str(input_path(cfg.data.pool_path, "data.unlabeled", cwd))
    if cfg.data.aux_table is not None:
        cfg.data.aux_table = str(input_path(cfg.data.aux_table, "data.aux_table", cwd))
    if cfg.data.cache_dir is not None:
        cfg.data.cache_dir = str(output_path(cfg.data.cache_dir, cwd=cwd))
    cfg.trainer.checkpoint_dir = str(output_path(cfg.trainer.checkpoint_dir, cwd=cwd))
    return cfg
