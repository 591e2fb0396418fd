"""The one way a training run is tracked: an MLflow run around the session, whose rank-0 sink logs every epoch
live and, at the end, the results, best checkpoint, metrics file and plots, in one process or on a cluster."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from auxray.tracking.uri import check_reachable, resolve_uri
from auxray.train.launch import train
from auxray.train.run_dir import Log, stderr_log
from auxray.train.run_plan import RunPlan
from auxray.train.session import SinkFactory, Summary

if TYPE_CHECKING:  # MLflow loads only when a run is tracked (seconds of start-up otherwise spent for nothing)
    from auxray.tracking.tracker import RunTracker


@dataclass(frozen=True)
class TrackerSink:
    """A picklable recipe for a RunTracker attached to an existing run, opened where the run trains (rank 0 of a
    Ray Train run, or this process). The run's owner sets its final status."""

    uri: str
    run_id: str
    experiment: str
    spool_dir: str

    def __call__(self) -> RunTracker:
        from auxray.tracking.tracker import RunTracker

        tracker = RunTracker(self.uri, self.experiment, spool_dir=self.spool_dir)
        tracker.attach(self.run_id)
        return tracker


def train_tracked(
    plan: RunPlan,
    *,
    tracking_uri: str | None = None,
    sinks: Sequence[SinkFactory] = (),
    progress: bool = True,
    log: Log = stderr_log,
) -> Summary:
    """`train` a planned run, tracked in MLflow when cfg.tracking.enabled (the summary then names the run:
    mlflow_run_id). Planning first means a run that cannot start leaves no FAILED run."""
    cfg = plan.cfg
    if not cfg.tracking.enabled:
        return train(plan, sinks=sinks, progress=progress, log=log)
    from auxray.tracking.tracker import RUN_DIR_TAG, tracked_run

    uri = resolve_uri(tracking_uri, cfg.tracking)
    check_reachable(uri)
    run_dir = str(plan.run_dir)
    # Every run is tagged with its folder; a resumed one goes on logging to the MLflow run of that folder.
    reopen = (RUN_DIR_TAG, run_dir) if plan.resume else None
    with tracked_run(
        uri,
        cfg.tracking.experiment,
        cfg.tracking.run_name or plan.name,
        cfg=cfg,
        tags={RUN_DIR_TAG: run_dir},
        reopen=reopen,
    ) as tracker:
        # This process's tracker serves a local run; a distributed run's rank 0 attaches its own to the same run.
        own: SinkFactory = (
            TrackerSink(uri, str(tracker.run_id), cfg.tracking.experiment, str(Path(tracker.spool_dir).resolve()))
            if plan.distributed
            else (lambda: tracker)
        )
        result = train(plan, sinks=[own, *sinks], progress=progress, log=log)
    result["mlflow_run_id"] = tracker.run_id
    return result
