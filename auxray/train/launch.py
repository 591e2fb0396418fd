"""Start a training session where the config says: in this process, or on Ray Train workers. Every entry point
(the CLI, the reproduction, the Python API) comes through `train`, so runs are named, resumed, checkpointed and
summarised one way."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from auxray.config import RunConfig
from auxray.data import build_data, check_source
from auxray.paths import absolute_paths
from auxray.train.forkmerge import BranchRunner
from auxray.train.loop import BilevelTrainer, EpochCallback
from auxray.train.run_dir import LatestCheckpoint, Log, LogSink, RunDir, resumable, run_name, stderr_log
from auxray.train.session import SinkFactory, Summary, run_session
from auxray.train.setup import check_gpus, resolve_device


def is_distributed(cfg: RunConfig) -> bool:
    """Ray Train runs the config when it asks for more than one worker, or for Ray explicitly."""
    return cfg.scaling.workers > 1 or cfg.scaling.use_ray


def plan_run(cfg: RunConfig, *, name: str, resume: bool, log: Log = stderr_log) -> tuple[RunConfig, str]:
    """cfg with absolute paths, and the run's folder under trainer.checkpoint_dir (`<name>/<stamp>`: fresh, or
    with `resume` the newest earlier run of `name`), after what can fail before a run starts is checked, before
    anything is opened for it (a tracking run, Ray): the data source and the auxiliary table against its images
    (logged: how many images it labels), unless the run joins a cluster whose nodes may see paths this one does
    not, and that there is a run to resume. Each failure is one line (UserError)."""
    cfg = absolute_paths(cfg)
    joins_cluster = is_distributed(cfg) and bool(cfg.scaling.address or os.environ.get("RAY_ADDRESS"))
    table = None
    if not joins_cluster:
        table = check_source(cfg.data)
        if is_distributed(cfg):
            check_gpus(cfg.scaling.gpus_per_worker, cfg.scaling.workers)
        else:
            resolve_device(cfg.trainer.device)
    base = Path(cfg.trainer.checkpoint_dir or "runs")
    folder = run_name(base, name, resume=resume, done=resumable(base, distributed=is_distributed(cfg)))
    if table is not None:
        log(table.report(cfg.data.aux_table or ""))
    return cfg, folder


def train(
    cfg: RunConfig,
    *,
    name: str,
    resume: bool = False,
    folder: str | None = None,
    sinks: Sequence[SinkFactory] = (),
    progress: bool = True,
    log: Log = stderr_log,
    callbacks: Sequence[EpochCallback] = (),
    until_epoch: int | None = None,
) -> Summary:
    """Train cfg and return its summary. `folder` is plan_run's (planned here when not given). `sinks` are opened
    where the run happens (rank 0 of a distributed run); `callbacks` see the trainer itself after every epoch
    (single-process runs only: diagnostics, benchmarks)."""
    if folder is None:
        cfg, folder = plan_run(cfg, name=name, resume=resume, log=log)
    if is_distributed(cfg):
        if callbacks or until_epoch is not None:
            raise ValueError("trainer callbacks and until_epoch apply to single-process runs only")
        # Ray is imported only for distributed runs: it takes seconds to load.
        from auxray.train.ray_run import run_distributed

        return run_distributed(cfg, folder=folder, sinks=sinks, progress=progress)
    return train_local(
        cfg,
        folder=folder,
        resume=resume,
        sinks=sinks,
        progress=progress,
        log=log,
        callbacks=callbacks,
        until_epoch=until_epoch,
    )


def train_local(
    cfg: RunConfig,
    *,
    folder: str,
    resume: bool = False,
    sinks: Sequence[SinkFactory] = (),
    progress: bool = True,
    log: Log = stderr_log,
    callbacks: Sequence[EpochCallback] = (),
    until_epoch: int | None = None,
) -> Summary:
    """One process, in `folder` under trainer.checkpoint_dir, resumed from its latest.pt when asked."""
    data = build_data(cfg.data, cfg.method.aux_tasks)
    path = Path(cfg.trainer.checkpoint_dir or "runs") / folder
    run_dir, latest = RunDir(path, cfg), LatestCheckpoint(path, cfg)
    branches: Callable[[BilevelTrainer], BranchRunner] | None = None
    if cfg.scaling.branch_actors:  # Ray is imported only when branches run on actors
        from auxray.train.ray_branches import RayBranches

        branches = RayBranches
    trainer = BilevelTrainer(cfg, data, callbacks=callbacks, progress=progress, branches=branches)
    state = latest.restore() if resume else None
    if state is not None:
        trainer.load_state_dict(state)
        log(f"resumed {path} at epoch {trainer.epoch} (step {trainer.step})")
    log(
        f"{cfg.method.name}: {len(data.train)} train / {len(data.aux)} aux / {len(data.val)} val / "
        f"{len(data.test)} test, {trainer.steps_per_epoch} steps per epoch, run dir {path}"
    )
    return run_session(
        trainer,
        [LogSink(log), run_dir, *(open_sink() for open_sink in sinks), latest],
        run_dir=path,
        until_epoch=until_epoch,
    )
