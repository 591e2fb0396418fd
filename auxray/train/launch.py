"""Start a training session where the config says: in this process, or on Ray Train workers. Every entry point
(the CLI, the reproduction, the Python API) comes through `train`, so runs are named, resumed, checkpointed and
summarised one way."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from auxray.config import RunConfig
from auxray.data import build_data
from auxray.paths import absolute_paths
from auxray.train.loop import BilevelTrainer, EpochCallback
from auxray.train.run_dir import Log, LogSink, RunDir, has_latest, run_name, stderr_log
from auxray.train.session import SinkFactory, Summary, run_session


def is_distributed(cfg: RunConfig) -> bool:
    """Ray Train runs the config when it asks for more than one worker, or for Ray explicitly."""
    return cfg.scaling.workers > 1 or cfg.scaling.use_ray


def train(
    cfg: RunConfig,
    *,
    name: str,
    resume: bool = False,
    sinks: Sequence[SinkFactory] = (),
    progress: bool = True,
    log: Log = stderr_log,
    callbacks: Sequence[EpochCallback] = (),
    until_epoch: int | None = None,
) -> Summary:
    """Train cfg and return its summary. `sinks` are opened where the run happens (rank 0 of a distributed run);
    `callbacks` see the trainer itself after every epoch (single-process runs only: diagnostics, benchmarks)."""
    cfg = absolute_paths(cfg)
    if is_distributed(cfg):
        if callbacks or until_epoch is not None:
            raise ValueError("trainer callbacks and until_epoch apply to single-process runs only")
        # Ray is imported only for distributed runs: it takes seconds to load.
        from auxray.train.ray_run import run_distributed

        return run_distributed(cfg, name=name, resume=resume, sinks=sinks, progress=progress)
    return train_local(
        cfg,
        name=name,
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
    name: str,
    resume: bool = False,
    sinks: Sequence[SinkFactory] = (),
    progress: bool = True,
    log: Log = stderr_log,
    callbacks: Sequence[EpochCallback] = (),
    until_epoch: int | None = None,
) -> Summary:
    """One process: its run folder under trainer.checkpoint_dir, resumed from latest.pt when asked."""
    data = build_data(cfg.data)
    base = Path(cfg.trainer.checkpoint_dir or "runs")
    folder = base / run_name(base, name, resume=resume, done=has_latest)
    run_dir = RunDir(folder, cfg)
    trainer = BilevelTrainer(cfg, data, callbacks=callbacks, progress=progress)
    state = run_dir.restore() if resume else None
    if state is not None:
        trainer.load_state_dict(state)
        log(f"resumed {folder} at epoch {trainer.epoch} (step {trainer.step})")
    log(
        f"{cfg.method.name}: {len(data.train)} train / {len(data.aux)} aux / {len(data.val)} val / "
        f"{len(data.test)} test, {trainer.steps_per_epoch} steps per epoch, run dir {folder}"
    )
    return run_session(
        trainer, [LogSink(log), run_dir, *(open_sink() for open_sink in sinks)], run_dir=folder, until_epoch=until_epoch
    )
