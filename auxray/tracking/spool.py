"""The offline buffer: tracking calls that could not reach MLflow, as JSON lines, and their replay.

A spool file starts with a header line (``op: run``: run id, store URI, experiment, run name, tags, parent)
followed by numbered records (``params``, ``metrics``, ``tags``, ``text``, ``artifact``, ``status``). A
sidecar ``<file>.sent`` records which numbers were delivered (and the run they went to), so replaying is
idempotent and resumes where an interrupted replay stopped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from auxray.errors import UserError
from auxray.tracking.uri import artifact_location, check_reachable, http_limits

MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
ERROR_CODES_MEANING_ABSENT = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def now_ms() -> int:
    """MLflow's timestamp unit."""
    return int(time.time() * 1000)


def quoted(text: str) -> str:
    """`text` as a single-quoted string in an MLflow search filter."""
    return "'" + text.replace("'", "\\'") + "'"


def is_unavailable(exc: BaseException) -> bool:
    """True when an MLflow call failed because the store could not be reached or could not serve it
    (connection refused, timeout, 5xx, auth, rate limit), False for a rejected payload (4xx)."""
    if isinstance(exc, requests.RequestException):
        return True
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status in (401, 403, 429)
    return type(exc).__name__ == "OperationalError"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), clipped."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def record_timeout(record: dict[str, Any], timeout: float) -> float:
    """Per-request timeout for a record: file uploads get six times the budget of small calls."""
    return timeout * 6 if record["op"] == "artifact" else timeout


def sent_path(spool: Path) -> Path:
    """The sidecar that marks delivered records."""
    return spool.with_name(spool.name + ".sent")


class Spool:
    """Append-only JSON-lines buffer for one run."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = {"op": "run", "seq": 0, **header}
        self.seq = 0
        if path.is_file():
            self.seq = sum(1 for line in path.read_text().splitlines() if line.strip()) - 1

    def open(self) -> None:
        """Create the file with its header line, when it does not exist yet."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.header) + "\n")
            self.seq = 0

    def append(self, record: dict[str, Any]) -> None:
        """Write one numbered record."""
        self.open()
        self.seq += 1
        with open(self.path, "a") as f:
            f.write(json.dumps({"seq": self.seq, **record}) + "\n")


def apply_record(client: MlflowClient, run_id: str, record: dict[str, Any]) -> None:
    """Send one record to a run."""
    op = record["op"]
    if op == "params":
        params = [Param(k, v) for k, v in record["params"].items()]
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])
    elif op == "metrics":
        metrics = [Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in record["metrics"]]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in record["tags"].items()])
    elif op == "text":
        client.log_text(run_id, record["text"], record["artifact_file"])
    elif op == "artifact":
        client.log_artifact(run_id, record["path"], record.get("artifact_path"))
    elif op == "status":
        client.set_terminated(run_id, record["status"], end_time=record.get("end_time"))
    else:
        raise ValueError(f"unknown spool record {op!r}")


def experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment `name`, created (with the store's default artifact root) when missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def run_exists(client: MlflowClient, run_id: str) -> bool:
    """Whether the store has this run."""
    try:
        client.get_run(run_id)
        return True
    except MlflowException as exc:
        if exc.error_code in ERROR_CODES_MEANING_ABSENT or exc.get_http_status_code() == 404:
            return False
        raise


def _read(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], set[int], str | None]:
    """Header, records, delivered record numbers, and the run they were delivered to."""
    if not path.is_file():
        raise UserError(f"spool file not found: {path}")
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines or lines[0].get("op") != "run":
        raise UserError(f"{path} is not an auxray tracking spool (no header line)")
    done: set[int] = set()
    target = None
    side = sent_path(path)
    if side.is_file():
        for line in side.read_text().splitlines():
            if line.strip():
                mark = json.loads(line)
                if "run_id" in mark:
                    target = mark["run_id"]
                if "seq" in mark:
                    done.add(int(mark["seq"]))
    return lines[0], lines[1:], done, target


def _mark(path: Path, mark: dict[str, Any]) -> None:
    with open(sent_path(path), "a") as f:
        f.write(json.dumps(mark) + "\n")
        f.flush()


def replay_spool(path: str | Path, uri: str | None = None, *, timeout: float = 10.0) -> dict[str, Any]:
    """Send a spool's undelivered records to its run (or, when the store lacks that run, to a new run in
    the same experiment) and mark each as delivered. Returns {run_id, sent, skipped, already_sent}."""
    path = Path(path)
    header, records, done, target = _read(path)
    uri = uri or header["uri"]
    check_reachable(uri, timeout=timeout)
    client = MlflowClient(tracking_uri=uri)
    sent = skipped = 0
    try:
        with http_limits(timeout=timeout, retries=2):
            if target is None or not run_exists(client, target):
                target = header["run_id"]
                if not run_exists(client, target):
                    target = _recreate(client, uri, header)
                _mark(path, {"run_id": target})
        for record in records:
            if record["seq"] in done:
                continue
            if _deliver(client, target, record, timeout):
                sent += 1
            else:
                skipped += 1
            _mark(path, {"seq": record["seq"]})
    except Exception as exc:
        if is_unavailable(exc):
            raise UserError(
                f"MLflow tracking server at {uri} is unreachable: {first_line(exc)}; "
                f"{sent} records sent, run the replay again later"
            ) from None
        raise
    return {"run_id": target, "sent": sent, "skipped": skipped, "already_sent": len(done)}


def _deliver(client: MlflowClient, run_id: str, record: dict[str, Any], timeout: float) -> bool:
    """Send one spooled record; False (with a warning) when it can never be delivered: a vanished file or a
    payload the store rejects. Unavailability propagates."""
    if record["op"] == "artifact" and not Path(record["path"]).exists():
        print(f"auxray: spooled artifact {record['path']} no longer exists; skipped", file=sys.stderr)
        return False
    try:
        with http_limits(timeout=record_timeout(record, timeout), retries=2):
            apply_record(client, run_id, record)
    except Exception as exc:
        if is_unavailable(exc):
            raise
        print(
            f"auxray: MLflow rejected spooled {record['op']} #{record['seq']}: {first_line(exc)}; skipped",
            file=sys.stderr,
        )
        return False
    return True


def _recreate(client: MlflowClient, uri: str, header: dict[str, Any]) -> str:
    """The run standing in for one the store does not have: the earlier run the header's `find` tags name (a run
    continued while the store was down), RUNNING again and tagged auxray.restored, else a new run."""
    exp = experiment_id(client, uri, header["experiment"])
    if header.get("find"):
        query = " and ".join(f"tags.`{k}` = {quoted(v)}" for k, v in header["find"].items())
        found = client.search_runs([exp], query, max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "auxray.restored", "true")
            return run_id
    tags = dict(header.get("tags") or {})
    if header.get("parent_run_id"):
        tags["mlflow.parentRunId"] = header["parent_run_id"]
    tags["auxray.replayed_from"] = header["run_id"]
    run = client.create_run(
        exp,
        start_time=header.get("created"),
        tags=tags,
        run_name=header.get("run_name"),
    )
    return run.info.run_id


def replay_folder(folder: str | Path, uri: str | None = None, *, timeout: float = 10.0) -> dict[str, int]:
    """Replay every spool in `folder` (a sweep's trials write theirs there) whose records were not all delivered: a
    trial that ended while the store was down leaves its last records there. Never raises; a spool that could not
    be sent is counted in `failed` with one warning line. Returns {spools, sent, failed}."""
    spools = sorted(Path(folder).glob("*.jsonl")) if Path(folder).is_dir() else []
    sent = failed = 0
    for path in spools:
        try:
            sent += replay_spool(path, uri, timeout=timeout)["sent"]
        except Exception as exc:
            failed += 1
            print(f"auxray: could not replay {path}: {first_line(exc)}", file=sys.stderr, flush=True)
    return {"spools": len(spools), "sent": sent, "failed": failed}
