"""Where runs are tracked: resolving the MLflow tracking URI, its artifact root, and a fast reachability check."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from auxray.config import TrackingConfig
from auxray.errors import UserError
from auxray.paths import output_path

DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
SQLITE_PREFIX = "sqlite:///"

# MLflow reads these on every request; its defaults (7 retries with exponential backoff, 120 s timeout)
# would stall a training loop for minutes when the server goes away.
HTTP_LIMIT_VARS = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
)


def is_http(uri: str) -> bool:
    """True for a tracking server reached over HTTP(S)."""
    return uri.startswith(("http://", "https://"))


def _absolute_sqlite(uri: str) -> str:
    """``sqlite:///relative.db`` made absolute against the storage root (Ray workers and jobs move the working
    directory)."""
    if not uri.startswith(SQLITE_PREFIX):
        return uri
    path = uri[len(SQLITE_PREFIX) :]
    if path in ("", ":memory:") or path.startswith("/"):
        return uri
    return SQLITE_PREFIX + str(output_path(path).resolve())


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    path = uri[len(SQLITE_PREFIX) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def resolve_uri(uri: str | None = None, cfg: TrackingConfig | None = None) -> str:
    """Explicit argument > ``tracking.uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<storage root>/mlflow.db`` (the
    working directory, or $AUXRAY_STORAGE, or ~/auxray inside a Ray job: see auxray.paths).

    A bare path ending in ``.db`` becomes a SQLite URI; file stores (``file:`` or a bare directory) are
    refused, since MLflow 3 no longer writes them.
    """
    chosen = uri or (cfg.uri if cfg is not None else None) or os.environ.get("MLFLOW_TRACKING_URI")
    if not chosen:
        return SQLITE_PREFIX + str(output_path(DB_NAME))
    chosen = chosen.strip()
    if "://" not in chosen and not chosen.startswith("sqlite:"):
        if chosen.endswith(".db"):
            return SQLITE_PREFIX + str(output_path(chosen).resolve())
        raise UserError(
            f"tracking URI {chosen!r} looks like a file store, which MLflow 3 does not support; "
            f"use sqlite:///path/to/{DB_NAME} or http://host:port"
        )
    if chosen.startswith("file:"):
        raise UserError(
            f"tracking URI {chosen!r} is a file store, which MLflow 3 does not support; "
            f"use sqlite:///path/to/{DB_NAME} or http://host:port"
        )
    return chosen.rstrip("/") if is_http(chosen) else _absolute_sqlite(chosen)


def artifact_location(uri: str) -> str | None:
    """Default artifact root for new experiments: ``mlartifacts/`` beside a SQLite file, else the server's."""
    db = sqlite_path(uri)
    return (db.parent / ARTIFACT_DIR).as_uri() if db is not None else None


@contextmanager
def http_limits(timeout: float = 10.0, retries: int = 1) -> Iterator[None]:
    """Short MLflow HTTP timeouts and few retries for the calls inside; variables the user set are kept."""
    wanted = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    }
    added = [k for k in wanted if k not in os.environ]
    for k in added:
        os.environ[k] = wanted[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def server_healthy(uri: str, timeout: float = 1.0) -> bool:
    """One GET of ``<uri>/health`` without retries: True when the server answers 200."""
    try:
        return requests.get(f"{uri.rstrip('/')}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def wait_reachable(uri: str, seconds: float, poll: float = 2.0) -> bool:
    """Wait up to `seconds` for the store to pass check_reachable; True once it does, False if it never did."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            check_reachable(uri, timeout=min(poll, 5.0))
            return True
        except UserError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(poll)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when the tracking store cannot be used.

    HTTP(S): GET ``/health`` (falling back to the REST experiments search) with a short timeout and no
    retries. SQLite: the database's directory must exist or be creatable. Raises UserError otherwise.
    """
    if is_http(uri):
        base = uri.rstrip("/")
        try:
            resp = requests.get(f"{base}/health", timeout=timeout)
            if resp.status_code == 200:
                return
            resp = requests.get(f"{base}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=timeout)
        except requests.RequestException as exc:
            raise UserError(
                f"MLflow tracking server at {uri} is unreachable: {type(exc).__name__}: {_short(exc)}"
            ) from None
        if resp.status_code in (401, 403):
            raise UserError(
                f"MLflow tracking server at {uri} refused access (HTTP {resp.status_code}); "
                "set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD"
            )
        if resp.status_code != 200:
            raise UserError(
                f"MLflow tracking server at {uri} is unreachable: HTTP {resp.status_code} from /health and the REST API"
            )
        return
    db = sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the MLflow store directory {db.parent}: {exc.strerror}") from None
        if not os.access(db.parent, os.W_OK):
            raise UserError(f"the MLflow store directory {db.parent} is not writable")


def _short(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception message, clipped."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if len(text) <= limit else text[:limit] + "..."
