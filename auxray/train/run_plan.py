"""A run's plan, made once before anything is opened for it: the config with absolute paths, the run folder, whether
it resumes, and the auxiliary table already read against the images. The CLI, `fit`, Tune trials and Ray Train
workers all take this one value, so the folder is computed and the table read in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from auxray.config import RunConfig
from auxray.data import TableColumns, check_source
from auxray.paths import absolute_paths
from auxray.train.checkpoint import LATEST
from auxray.train.run_dir import RAY_DIR, Log, ray_train_name, resumable, run_name, stderr_log
from auxray.train.setup import check_gpus, resolve_device


def is_distributed(cfg: RunConfig) -> bool:
    """Ray Train runs the config when it asks for more than one worker, or for Ray explicitly."""
    return cfg.scaling.workers > 1 or cfg.scaling.use_ray


@dataclass(frozen=True)
class RunPlan:
    """What a run is: ``cfg`` (paths absolute), its ``name``, the folder ``root/folder`` its files go to (``folder``
    is ``<name>/<stamp>``), whether it continues the run in that folder from its checkpoint, and the auxiliary table's
    columns when this process read them (None without a table, or when the run's nodes read it themselves)."""

    cfg: RunConfig
    name: str
    root: Path
    folder: str
    resume: bool = False
    table: TableColumns | None = None

    @property
    def run_dir(self) -> Path:
        """The run's folder: config.json, metrics.jsonl, best.pt and (one process) latest.pt."""
        return self.root / self.folder

    @property
    def distributed(self) -> bool:
        """Whether Ray Train runs it."""
        return is_distributed(self.cfg)

    @property
    def restore(self) -> Path | None:
        """The checkpoint a resumed single-process run continues from (Ray Train restores its own from storage)."""
        return self.run_dir / LATEST if self.resume and not self.distributed else None

    @property
    def ray_storage(self) -> Path:
        """Ray Train's storage for a distributed run (every node must reach it on a real cluster)."""
        return self.root / RAY_DIR

    @property
    def ray_name(self) -> str:
        """Ray Train's name for the run (its storage is flat)."""
        return ray_train_name(Path(self.folder))


def plan_run(cfg: RunConfig, *, name: str, resume: bool = False, log: Log = stderr_log) -> RunPlan:
    """The plan of running cfg as `name` under trainer.checkpoint_dir (`<name>/<stamp>`: fresh, or with `resume`
    the newest earlier run of `name`), after what can fail before a run starts is checked, before anything is
    opened for it (a tracking run, Ray): the data source and the auxiliary table against its images (logged: how
    many images it labels), unless the run joins a cluster whose nodes may see paths this one does not, and that
    there is a run to resume. Each failure is one line (UserError)."""
    cfg = absolute_paths(cfg)
    distributed = is_distributed(cfg)
    joins_cluster = distributed and bool(cfg.scaling.address or os.environ.get("RAY_ADDRESS"))
    table = None
    if not joins_cluster:
        table = check_source(cfg.data)
        if distributed:
            check_gpus(cfg.scaling.gpus_per_worker, cfg.scaling.workers)
        else:
            resolve_device(cfg.trainer.device)
    root = Path(cfg.trainer.checkpoint_dir or "runs")
    folder = run_name(root, name, resume=resume, done=resumable(root, distributed=distributed))
    if table is not None:
        log(table.report(cfg.data.aux_table or ""))
    return RunPlan(cfg, name, root, folder, resume, table)
