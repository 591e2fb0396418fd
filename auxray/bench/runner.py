"""Training the reproduction's runs: one config at a time (``train_one``, resumed from an interrupted job's
checkpoint when its config is unchanged, with diagnostics) or several at once in spawned processes that split the
CPUs between them (``train_all``).

torch, auxray.train and MLflow are imported inside the functions that use them: the ``auxray`` CLI imports this
module (through ``bench.overhead``) when it builds its parser, and stays quick to start.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auxray.errors import UserError

if TYPE_CHECKING:
    from auxray.config import RunConfig
    from auxray.train.session import SinkFactory

Key = tuple[str, int]  # (method, seed)


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the JSON result)."""
    print(message, file=sys.stderr, flush=True)


def fmt_seconds(s: float) -> str:
    """A duration for a progress line: seconds, minutes or hours."""
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    """Torch threads for each of `jobs` concurrent runs: the usable CPUs split evenly, at least one."""
    return max(1, usable_cpus() // jobs)


def machine_info(device: str | None) -> dict[str, Any]:
    """Platform, Python, CPUs, torch and device, for the record of a benchmark."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def resumable_run(cfg: RunConfig, name: str) -> tuple[bool, int, float]:
    """Whether the newest checkpoint of this run (an earlier job killed mid-run) has the very same config,
    and if so the epoch it reached and the seconds its epochs took."""
    from auxray.paths import absolute_paths
    from auxray.train.checkpoint import LATEST, load_checkpoint  # torch
    from auxray.train.run_dir import has_latest, run_name

    cfg = absolute_paths(cfg)  # what the run folder's config.json holds
    base = Path(cfg.trainer.checkpoint_dir or "runs")
    try:
        run_dir = base / run_name(base, name, resume=True, done=has_latest)
    except UserError:
        return False, 0, 0.0
    if not (run_dir / "config.json").is_file():
        return False, 0, 0.0
    try:
        if json.loads((run_dir / "config.json").read_text()) != json.loads(cfg.model_dump_json()):
            return False, 0, 0.0
        state = load_checkpoint(run_dir / LATEST)
    except Exception:  # a torn checkpoint: start the run over
        return False, 0, 0.0
    history = state.get("history", [])
    return True, int(state.get("epoch", 0)), float(sum(h.get("epoch_seconds", 0.0) for h in history))


def train_one(
    cfg: RunConfig,
    name: str,
    *,
    tracking: bool,
    resume: bool,
    echo: Callable[[str], None],
    sinks: Sequence[SinkFactory] = (),
) -> dict[str, Any]:
    """Train one resolved config in this process (tracked in MLflow when `tracking`) and return its summary:
    the one place the reproduction trains. `echo` takes the per-epoch lines."""
    from auxray.tracking.training import train_tracked  # torch and MLflow load only when a run trains
    from auxray.train.run_plan import plan_run

    if not tracking:
        cfg = cfg.model_copy(deep=True)
        cfg.tracking.enabled = False
    return train_tracked(plan_run(cfg, name=name, resume=resume, log=echo), progress=False, log=echo, sinks=sinks)


def run_job(
    cfg: RunConfig, name: str, tracking: bool, verbose: bool, resume: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One (method, seed) of a table: resume an interrupted run of the same config, train, and return its
    summary (seconds include the interrupted part's epochs) and diagnostics."""
    from auxray.bench.run_diagnostics import Diagnostics  # torch

    diag = Diagnostics()
    resumed, from_epoch, earlier_seconds = resumable_run(cfg, name) if resume else (False, 0, 0.0)
    if resumed:
        log(f"[reproduce] {name}: resuming its interrupted run at epoch {from_epoch}/{cfg.trainer.epochs}")
    quiet = log if verbose else (lambda message: None)
    summary = train_one(cfg, name, tracking=tracking, resume=resumed, echo=quiet, sinks=[lambda: diag])
    if resumed:  # count the interrupted part's epochs too (not its start-up)
        summary["seconds"] += earlier_seconds
        summary["resumed_from_epoch"] = from_epoch
    return summary, diag.out


def _init_job(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)


def train_all(
    pending: Sequence[Key],
    cfgs: dict[Key, RunConfig],
    tracking: bool,
    verbose: bool,
    resume: bool,
    jobs: int,
    threads: int | None,
) -> Iterator[tuple[str, int, dict[str, Any], dict[str, Any]]]:
    """Yield (method, seed, summary, diagnostics) as runs finish: in this process one after another (jobs=1), or
    up to `jobs` at a time in spawned processes with `threads` torch threads each. Small networks use two cores
    poorly within one process, so two single-threaded runs at a time finish a table sooner on a 2-core machine.
    When a run fails, the runs not started are dropped, the ones under way still finish and are yielded, and
    then the first error is raised."""
    if jobs <= 1:
        for m, s in pending:
            summary, diag = run_job(cfgs[m, s], f"{m}_s{s}", tracking, verbose, resume=resume)
            yield m, s, summary, diag
        return
    error: BaseException | None = None
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_job, initargs=(threads,)
    ) as pool:
        futures = {
            pool.submit(run_job, cfgs[m, s], f"{m}_s{s}", tracking, verbose, resume=resume): (m, s) for m, s in pending
        }
        while futures:
            finished, _ = wait(futures, return_when=FIRST_COMPLETED)
            for f in finished:
                m, s = futures.pop(f)
                if f.cancelled():
                    continue
                if f.exception() is not None:
                    error = error or f.exception()
                    for other in futures:
                        other.cancel()
                    continue
                summary, diag = f.result()
                yield m, s, summary, diag
    if error is not None:
        raise error
