"""MLflow bookkeeping of a sweep: the parent run (created once, found again on resume), one child run per
Tune trial (tagged with its trial id so a restored trial reattaches to it), and closing stale children."""

from __future__ import annotations

import json
import sys
from typing import Any

from mlflow import MlflowClient

from auxray.tracking import RunTracker, find_parent, start_parent
from auxray.tracking.spool import first_line, is_unavailable
from auxray.tracking.tracker import KIND_TAG, PARENT_TAG, SWEEP_TAG, quoted
from auxray.tracking.uri import http_limits

TRIAL_TAG = "auxray.trial_id"
STOPPED_TAG = "auxray.stopped_early"


def parent_run(uri: str, experiment: str, sweep_name: str, *, resume: bool, params: dict[str, Any]) -> str:
    """The sweep's parent run: created by a fresh sweep, reattached (and set RUNNING) by a resumed one."""
    run_id = find_parent(uri, experiment, sweep_name) if resume else None
    if run_id is None:
        run_id = start_parent(uri, experiment, sweep_name, tags={"auxray.search": params.get("search", "")})
        client = MlflowClient(tracking_uri=uri)
        with http_limits():
            for key, value in params.items():
                client.log_param(run_id, key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    else:
        with http_limits():
            MlflowClient(tracking_uri=uri).update_run(run_id, status="RUNNING")
    return run_id


def children(uri: str, parent_id: str, *, status: str | None = None) -> list[Any]:
    """The child runs of a sweep's parent (optionally only those with a given status)."""
    client = MlflowClient(tracking_uri=uri)
    with http_limits():
        parent = client.get_run(parent_id)
        query = f"tags.`{PARENT_TAG}` = {quoted(parent_id)}"
        if status:
            query += f" and attributes.status = '{status}'"
        return client.search_runs([parent.info.experiment_id], filter_string=query, max_results=1000)


def child_of_trial(uri: str, parent_id: str, trial_id: str) -> Any | None:
    """The child run of one Tune trial, or None."""
    client = MlflowClient(tracking_uri=uri)
    with http_limits():
        parent = client.get_run(parent_id)
        query = f"tags.`{PARENT_TAG}` = {quoted(parent_id)} and tags.`{TRIAL_TAG}` = {quoted(trial_id)}"
        runs = client.search_runs([parent.info.experiment_id], filter_string=query, max_results=1)
    return runs[0] if runs else None


def fail_stale_children(uri: str, parent_id: str) -> int:
    """Mark the parent's RUNNING children FAILED (their driver died); restored trials reopen theirs."""
    client = MlflowClient(tracking_uri=uri)
    stale = children(uri, parent_id, status="RUNNING")
    with http_limits():
        for run in stale:
            client.set_tag(run.info.run_id, "auxray.interrupted", "driver stopped before the trial ended")
            client.set_terminated(run.info.run_id, "FAILED")
    return len(stale)


def open_child(
    uri: str, experiment: str, *, sweep_name: str, parent_id: str, trial_id: str, spool_dir: str
) -> RunTracker:
    """A started RunTracker for one trial: its earlier child run when the trial is restored, else a new one."""
    tags = {SWEEP_TAG: sweep_name, KIND_TAG: "trial", TRIAL_TAG: trial_id}
    tracker = RunTracker(
        uri, experiment, f"{sweep_name}-{trial_id}", parent_run_id=parent_id, tags=tags, spool_dir=spool_dir
    )
    earlier = None
    try:
        earlier = child_of_trial(uri, parent_id, trial_id)
    except Exception as exc:
        if is_unavailable(exc):  # a restored trial's run may exist: the replay looks again, so no duplicate
            tracker.start_offline(exc, find={PARENT_TAG: parent_id, TRIAL_TAG: trial_id})
            return tracker
        print(f"auxray: could not look up the earlier run of trial {trial_id}: {first_line(exc)}", file=sys.stderr)
    if earlier is None:
        tracker.start()
        return tracker
    tracker.reopen(earlier.info.run_id)
    with http_limits():
        for tag in (STOPPED_TAG, "auxray.interrupted"):
            if tag in earlier.data.tags:
                tracker.client.delete_tag(earlier.info.run_id, tag)
    return tracker


def tag_orphans(uri: str, parent_id: str, known_trials: set[str]) -> int:
    """Children of trials the restored experiment does not know (started just before the driver died, after
    its last state snapshot; Tune replaced them with new trials): tagged auxray.orphaned, left FAILED."""
    client = MlflowClient(tracking_uri=uri)
    orphans = [r for r in children(uri, parent_id) if r.data.tags.get(TRIAL_TAG) not in known_trials]
    with http_limits():
        for run in orphans:
            client.set_tag(run.info.run_id, "auxray.orphaned", "trial lost with the killed driver; replaced")
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "FAILED")
    return len(orphans)


def close_child(
    uri: str, parent_id: str, trial_id: str, *, status: str, stopped_early: bool, error: str | None = None
) -> None:
    """Driver-side guarantee that a finished trial's child run is not left RUNNING (a trial stopped by the
    scheduler may be torn down before its own cleanup completes)."""
    try:
        run = child_of_trial(uri, parent_id, trial_id)
        if run is None:
            return
        client = MlflowClient(tracking_uri=uri)
        with http_limits():
            if stopped_early:
                client.set_tag(run.info.run_id, STOPPED_TAG, "true")
            if error:
                client.set_tag(run.info.run_id, "auxray.error", error[:500])
            if run.info.status == "RUNNING" or (error and run.info.status != status):
                client.set_terminated(run.info.run_id, status)
    except Exception as exc:
        print(f"auxray: could not close the MLflow run of trial {trial_id}: {first_line(exc)}", file=sys.stderr)
