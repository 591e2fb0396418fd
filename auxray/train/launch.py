"""Start a planned training session where the config says: in this process, or on Ray Train workers. Every entry
point (the CLI, the reproduction, the Python API, a distributed Tune trial) comes through `train`, so runs are
named, resumed, checkpointed and summarised one way."""

from __future__ import annotations

from collections.abc import Sequence

from auxray.train.checkpoint import load_checkpoint
from auxray.train.run_dir import LatestCheckpoint, Log, LogSink, RunDir, stderr_log
from auxray.train.run_plan import RunPlan
from auxray.train.session import SinkFactory, Summary, build_trainer, run_session


def train(
    plan: RunPlan,
    *,
    sinks: Sequence[SinkFactory] = (),
    progress: bool = True,
    log: Log = stderr_log,
    until_epoch: int | None = None,
) -> Summary:
    """Train a planned run (auxray.train.run_plan.plan_run) and return its summary. `sinks` are opened where the
    run happens (rank 0 of a distributed run); `until_epoch` stops a single-process run early."""
    if plan.distributed:
        if until_epoch is not None:
            raise ValueError("until_epoch applies to single-process runs only")
        # Ray is imported only for distributed runs: it takes seconds to load.
        from auxray.train.ray_run import run_distributed

        return run_distributed(plan, sinks=sinks, progress=progress)
    return train_local(plan, sinks=sinks, progress=progress, log=log, until_epoch=until_epoch)


def train_local(
    plan: RunPlan,
    *,
    sinks: Sequence[SinkFactory] = (),
    progress: bool = True,
    log: Log = stderr_log,
    until_epoch: int | None = None,
) -> Summary:
    """One process, in the plan's run folder, resumed from its latest.pt when the plan resumes."""
    cfg, path = plan.cfg, plan.run_dir
    state = load_checkpoint(plan.restore) if plan.restore is not None else None
    trainer = build_trainer(plan, state=state, progress=progress)
    # The run folder is made once the trainer is built: a setting only the objective can check leaves no folder.
    run_dir, latest = RunDir(path, cfg), LatestCheckpoint(path, cfg)
    if state is not None:
        log(f"resumed {path} at epoch {trainer.epoch} (step {trainer.step})")
    data = trainer.data
    log(
        f"{cfg.method.name}: {len(data.train)} train / {len(data.outer)} outer / {len(data.val)} val / "
        f"{len(data.test)} test, {trainer.steps_per_epoch} steps per epoch, run dir {path}"
    )
    return run_session(
        trainer,
        [LogSink(log), run_dir, *(open_sink() for open_sink in sinks), latest],
        run_dir=path,
        until_epoch=until_epoch,
    )
