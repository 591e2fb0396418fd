"""One MLflow run per training run: params, per-epoch metrics, artifacts and a final status that is always
set. When the store goes away mid-run, calls are buffered to a spool file instead of failing training."""

from __future__ import annotations

import json
import math
import numbers
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from mlflow import MlflowClient

from auxray.config import RunConfig
from auxray.paths import output_path
from auxray.tracking.spool import (
    Spool,
    apply_record,
    experiment_id,
    first_line,
    is_unavailable,
    now_ms,
    quoted,
    record_timeout,
    replay_spool,
)
from auxray.tracking.uri import http_limits, is_http, resolve_uri, server_healthy

if TYPE_CHECKING:  # torch loads only where a run trains; `auxray tracking replay` stays light
    from auxray.train.session import RunView

Status = Literal["FINISHED", "FAILED", "KILLED"]
PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "auxray.sweep"
KIND_TAG = "auxray.kind"
EPOCH_METRIC = "epoch_seconds"  # logged at every epoch of every run: its history says which epochs are logged
RUN_DIR_TAG = "auxray.run_dir"  # a run's folder: `auxray train --resume` continues the MLflow run that has it
MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def sanitize_key(key: Any) -> str:
    """A metric/param name MLflow accepts: alphanumerics, ``_ - . / : space``, no empty, ``.`` or ``..``
    path parts, at most 250 characters."""
    text = _BAD_KEY_CHARS.sub("_", str(key))[:MAX_KEY_LENGTH]
    parts = [p for p in text.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping to dotted keys with string values (lists as JSON), e.g. ``hypergrad.steps``."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            out[sanitize_key(name)] = text[:MAX_PARAM_LENGTH]
    return out


def _as_number(value: Any) -> float | None:
    """A float for plain numbers and one-element tensors/arrays; None for anything else (and bools)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        try:
            return _as_number(value.item())
        except (TypeError, ValueError):
            return None
    return None


class RunTracker:
    """Tracks one run in MLflow; also a training session's sink (``epoch(view, metrics, summary)``).

    Every call is fast-failing: MLflow's HTTP timeout and retries are kept short, and once the store is
    unreachable nothing more is sent to it; calls go to ``<spool_dir>/<run_id>.jsonl`` (one warning line),
    with a cheap health probe every `probe_interval` seconds that resends the spool when the store is back.
    """

    def __init__(
        self,
        uri: str | None,
        experiment: str = "auxray",
        run_name: str | None = None,
        *,
        parent_run_id: str | None = None,
        tags: dict[str, Any] | None = None,
        spool_dir: str | Path | None = None,
        timeout: float = 10.0,
        probe_interval: float = 60.0,
    ) -> None:
        self.uri = resolve_uri(uri)
        self.experiment, self.run_name = experiment, run_name
        self.parent_run_id = parent_run_id
        self.tags = {sanitize_key(k): str(v) for k, v in (tags or {}).items()}
        self.spool_dir = Path(spool_dir) if spool_dir is not None else output_path("mlflow-spool")
        self.timeout, self.probe_interval = timeout, probe_interval
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = None
        # Tags of an earlier run this one continues, which could not be looked up (the store was unreachable):
        # kept in the spool's header, so that its replay goes on in that run instead of opening a duplicate.
        self.find: dict[str, str] | None = None
        self.logged_through = 0  # the last epoch the run has logged (set when attaching to an existing run)
        self.offline = False
        self.status: str | None = None
        self._spool: Spool | None = None
        self._created = now_ms()
        self._last_probe = 0.0
        self._warned: set[str] = set()

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        """True once the run's final status has been sent (or spooled)."""
        return self.status is not None

    @property
    def spool_path(self) -> Path | None:
        """The spool file of this run (it exists only once something was buffered)."""
        if self._spool is not None:
            return self._spool.path
        return self.spool_dir / f"{self.run_id}.jsonl" if self.run_id else None

    def start(self) -> str:
        """Create the run (nested under parent_run_id when given) and return its id; an unreachable store
        gives an ``offline-…`` id whose records a replay sends to a new run."""
        tags = dict(self.tags)
        if self.parent_run_id:
            tags[PARENT_TAG] = self.parent_run_id
        try:
            with http_limits(self.timeout):
                exp = experiment_id(self.client, self.uri, self.experiment)
                run = self.client.create_run(exp, start_time=self._created, tags=tags, run_name=self.run_name)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            return self.start_offline(exc)
        self.run_id = run.info.run_id
        return self.run_id

    def start_offline(self, exc: BaseException, find: dict[str, str] | None = None) -> str:
        """Start buffering to a spool under an ``offline-…`` id, the store being unreachable (`exc` says why).
        `find`: the tags of an earlier run this one continues, if the replay finds one (else it opens a new run)."""
        self.find = find
        self.run_id = f"offline-{uuid.uuid4().hex}"
        self._go_offline(exc)
        self._get_spool().open()
        return self.run_id

    def start_or_reopen(self, tag: str, value: str) -> str:
        """Reopen the run of this experiment tagged `tag` = `value` (set RUNNING again: a resumed run goes on
        logging where it stopped), else start a new run carrying that tag. Returns the run id."""
        self.tags[tag] = value
        earlier = None
        try:
            with http_limits(self.timeout):
                exp = self.client.get_experiment_by_name(self.experiment)
                query = f"tags.`{tag}` = {quoted(value)}"
                found = self.client.search_runs([exp.experiment_id], query, max_results=1) if exp else []
            earlier = found[0].info.run_id if found else None
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            return self.start_offline(exc, find={tag: value})
        if earlier is None:
            return self.start()
        self.reopen(earlier)
        return earlier

    def reopen(self, run_id: str) -> None:
        """Log to an earlier run again (a resumed run or a restored trial): RUNNING, tagged auxray.restored."""
        self.attach(run_id)
        if self.offline:
            return
        with http_limits(self.timeout):
            self.client.update_run(run_id, status="RUNNING")
        self.set_tags({"auxray.restored": "true"})

    def attach(self, run_id: str) -> None:
        """Log to an existing run (one a driver created, or an earlier attempt of this one) instead of starting a
        new one. Epochs the run has logged already are not logged again: a run restored from a checkpoint older
        than its last logged epoch trains those epochs again, to the same values."""
        self.run_id = run_id
        if run_id.startswith("offline-"):
            self._go_offline(RuntimeError("the run was created while the store was unreachable"))
            return
        try:
            with http_limits(self.timeout):
                logged = self.client.get_metric_history(run_id, EPOCH_METRIC)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            self._go_offline(exc)  # the spool keeps this attempt's epochs; a replay sends them
            return
        self.logged_through = max((m.step for m in logged), default=0)

    def end(self, status: Status = "FINISHED") -> None:
        """Set the run's final status (once)."""
        if self.ended or self.run_id is None:
            return
        self._send({"op": "status", "status": status, "end_time": now_ms()})
        self.status = status

    # ---- logging -------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        """Parameters, flattened to dotted string values."""
        flat = flatten(params)
        if flat:
            self._send({"op": "params", "params": flat})

    def log_config(self, cfg: RunConfig) -> None:
        """The run config as flattened params (``method.name``, ``hypergrad.steps``, …) and config.yaml."""
        tree = cfg.model_dump(mode="json")
        self.log_params(tree)
        self.set_tags({"auxray.method": cfg.method.name})
        self._send({"op": "text", "text": yaml.safe_dump(tree, sort_keys=False), "artifact_file": "config.yaml"})

    def log_metrics(self, metrics: dict[str, Any], step: int = 0) -> None:
        """Every numeric entry of `metrics` at `step` (keys sanitised; other values ignored)."""
        ts = now_ms()
        rows = []
        for key, value in metrics.items():
            number = _as_number(value)
            if number is not None:
                rows.append({"key": sanitize_key(key), "value": number, "step": int(step), "timestamp": ts})
        if rows:
            self._send({"op": "metrics", "metrics": rows})

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Run tags."""
        if tags:
            self._send({"op": "tags", "tags": {sanitize_key(k): str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """One local file (or directory) as an artifact."""
        path = Path(path).resolve()
        if path.exists():
            self._send({"op": "artifact", "path": str(path), "artifact_path": artifact_path})

    def epoch(self, view: RunView, metrics: dict[str, Any], summary: dict[str, Any] | None) -> None:
        """Session sink: every numeric metric of the epoch at step = its epoch (rank 0 only); with the final
        summary also the run's results (log_result). The run's status is left to its owner."""
        if view.rank != 0:
            return
        epoch = int(metrics.get("epoch", view.epoch))
        if epoch > self.logged_through:
            self.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, epoch)
        if summary is not None:
            self.log_result(view, summary)

    def log_result(self, view: RunView | None, result: dict[str, Any]) -> None:
        """Final metrics (test accuracy, ...) and artifacts (best.pt, metrics.jsonl, plots). Never raises: a
        tracking problem never fails a finished training run."""
        try:
            final = {k: v for k, v in result.items() if k not in ("epochs", "steps")}
            final = {k: v for k, v in final.items() if (n := _as_number(v)) is not None and math.isfinite(n)}
            step = view.epoch if view is not None else int(result.get("epochs") or 0)
            self.log_metrics(final, step)
            run_dir = Path(result["run_dir"]) if result.get("run_dir") else None
            if run_dir is not None:
                self.set_tags({RUN_DIR_TAG: str(run_dir)})
                self.log_artifact(run_dir / "best.pt", "checkpoints")
                self.log_artifact(run_dir / "metrics.jsonl")
            if view is not None:
                for png in self._plots(view, run_dir):
                    self.log_artifact(png, "plots")
        except Exception as exc:
            self._warn_once("finish", f"auxray: tracking could not log the run's results: {first_line(exc)}")

    def finish(self, view: RunView | None, result: dict[str, Any], status: Status = "FINISHED") -> None:
        """log_result, then the final status."""
        try:
            self.log_result(view, result)
        finally:
            self.end(status)

    def _plots(self, view: RunView, run_dir: Path | None) -> list[Path]:
        out = run_dir / "plots" if run_dir is not None else self.spool_dir / "plots" / str(self.run_id)
        try:
            from auxray.tracking.plots import write_plots  # matplotlib loads only when a run ends

            return write_plots(view, out)
        except Exception as exc:
            self._warn_once("plots", f"auxray: could not draw the run's plots: {first_line(exc)}")
            return []

    # ---- delivery ------------------------------------------------------------------------
    def _get_spool(self) -> Spool:
        if self._spool is None:
            path = self.spool_path
            if path is None:
                raise RuntimeError("RunTracker.start() must be called before logging")
            self._spool = Spool(
                path,
                {
                    "run_id": self.run_id,
                    "uri": self.uri,
                    "experiment": self.experiment,
                    "run_name": self.run_name,
                    "tags": self.tags,
                    "parent_run_id": self.parent_run_id,
                    "created": self._created,
                    "find": self.find,
                },
            )
        return self._spool

    def _send(self, record: dict[str, Any]) -> None:
        """Deliver one record now, or spool it when the store is (or just became) unreachable."""
        if self.run_id is None:
            raise RuntimeError("RunTracker.start() must be called before logging")
        if self.offline and not self._recover():
            self._get_spool().append(record)
            return
        try:
            with http_limits(record_timeout(record, self.timeout)):
                apply_record(self.client, self.run_id, record)
        except Exception as exc:
            if is_unavailable(exc):
                self._go_offline(exc)
                self._get_spool().append(record)
            else:
                self._warn_once(
                    f"reject:{record['op']}", f"auxray: MLflow rejected the run's {record['op']}: {first_line(exc)}"
                )

    def _go_offline(self, exc: BaseException) -> None:
        self.offline = True
        self._last_probe = time.monotonic()
        self._warn_once(
            "offline",
            f"auxray: MLflow server unreachable; buffering to {self.spool_path}; "
            f"resend with `auxray tracking replay {self.spool_path}` ({first_line(exc)})",
        )

    def _recover(self) -> bool:
        """At most every probe_interval seconds: if the store answers, resend the spool and go back online."""
        if time.monotonic() - self._last_probe < self.probe_interval:
            return False
        self._last_probe = time.monotonic()
        if is_http(self.uri) and not server_healthy(self.uri, timeout=1.0):
            return False
        path = self.spool_path
        if path is None:
            return False
        try:
            done = replay_spool(path, self.uri, timeout=self.timeout)
        except Exception:
            return False
        self.run_id, self.offline = done["run_id"], False
        print(
            f"auxray: MLflow server reachable again; resent {done['sent']} buffered records to run {self.run_id}",
            file=sys.stderr,
            flush=True,
        )
        return True

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            print(message, file=sys.stderr, flush=True)


@contextmanager
def tracked_run(
    uri: str | None,
    experiment: str = "auxray",
    run_name: str | None = None,
    *,
    cfg: RunConfig | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    spool_dir: str | Path | None = None,
    reopen: tuple[str, str] | None = None,
    **options: Any,
) -> Iterator[RunTracker]:
    """A started RunTracker (with cfg logged when given) whose run always ends: FAILED when the body raises
    (KeyboardInterrupt included, with the error as the tag auxray.error), else FINISHED unless
    ``finish``/``end`` already set a status. `reopen` = (tag, value): continue the earlier run carrying that tag
    (see RunTracker.start_or_reopen)."""
    tracker = RunTracker(
        uri, experiment, run_name, parent_run_id=parent_run_id, tags=tags, spool_dir=spool_dir, **options
    )
    if reopen is not None:
        tracker.start_or_reopen(*reopen)
    else:
        tracker.start()
    try:
        if cfg is not None:
            tracker.log_config(cfg)
        yield tracker
    except BaseException as exc:
        if not tracker.ended:
            tracker.set_tags({"auxray.error": f"{type(exc).__name__}: {first_line(exc)}"})
            tracker.end("FAILED")
        raise
    else:
        tracker.end("FINISHED")
