"""A sweep's parent MLflow run: created once, found again when the sweep resumes, ended with the sweep. Its
children are RunTrackers with parent_run_id set."""

from __future__ import annotations

import sys
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from auxray.errors import UserError
from auxray.tracking.spool import experiment_id, first_line
from auxray.tracking.tracker import KIND_TAG, SWEEP_TAG, Status, is_unavailable, quoted, sanitize_key
from auxray.tracking.uri import http_limits, resolve_uri


def start_parent(uri: str | None, experiment: str, sweep_name: str, tags: dict[str, Any] | None = None) -> str:
    """Create the parent run of a sweep and return its id; children pass it as RunTracker(parent_run_id=…).
    The store must be reachable (UserError otherwise); end it with end_parent."""
    uri = resolve_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    all_tags = {sanitize_key(k): str(v) for k, v in (tags or {}).items()}
    all_tags.update({SWEEP_TAG: sweep_name, KIND_TAG: "sweep"})
    try:
        with http_limits():
            exp = experiment_id(client, uri, experiment)
            return client.create_run(exp, tags=all_tags, run_name=sweep_name).info.run_id
    except MlflowException as exc:
        if is_unavailable(exc):
            raise UserError(f"MLflow tracking server at {uri} is unreachable: {first_line(exc)}") from None
        raise


def find_parent(uri: str | None, experiment: str, sweep_name: str) -> str | None:
    """The newest parent run of `sweep_name` (to reattach a resumed sweep), or None."""
    uri = resolve_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    with http_limits():
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            max_results=1,
            order_by=["attributes.start_time DESC"],
            filter_string=f"tags.`{SWEEP_TAG}` = {quoted(sweep_name)} and tags.`{KIND_TAG}` = 'sweep'",
        )
    return runs[0].info.run_id if runs else None


def end_parent(uri: str | None, run_id: str, status: Status = "FINISHED") -> None:
    """End a sweep's parent run; a failure is one warning line, never an exception."""
    try:
        with http_limits():
            MlflowClient(tracking_uri=resolve_uri(uri)).set_terminated(run_id, status)
    except Exception as exc:
        print(f"auxray: could not end MLflow parent run {run_id}: {first_line(exc)}", file=sys.stderr, flush=True)
