"""`auxray ui`: the MLflow UI over the local store (or the address of a tracking server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from auxray.tracking.uri import ARTIFACT_DIR, is_http, resolve_uri, sqlite_path

# MLflow 3's server also starts a GenAI job runner (several worker processes) that auxray never uses.
UI_ENV_DEFAULTS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow ui` command line for a database store (one worker; artifacts beside a SQLite file)."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    db = sqlite_path(uri)
    if db is not None:
        cmd += ["--default-artifact-root", (db.parent / ARTIFACT_DIR).as_uri()]
    return cmd


def ui_env() -> dict[str, str]:
    """The environment for `mlflow ui`: ours, with UI_ENV_DEFAULTS where the user set nothing."""
    return {**UI_ENV_DEFAULTS, **os.environ}


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGINT the UI's process group (server and workers), escalating to SIGTERM and SIGKILL."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def serve_ui(uri: str | None = None, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Run the MLflow UI in the foreground until Ctrl-C (forwarded to its whole process group) and return its
    exit code (130 after Ctrl-C); for an HTTP tracking server just print its address, which serves the UI."""
    uri = resolve_uri(uri)
    if is_http(uri):
        print(f"MLflow UI: {uri}", flush=True)
        return 0
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        print(f"auxray: no runs tracked yet ({db} does not exist); the UI will be empty", file=sys.stderr, flush=True)
    print(f"MLflow UI for {uri}: http://{host}:{port}  (Ctrl-C to stop)", flush=True)
    proc = subprocess.Popen(ui_command(uri, host, port), env=ui_env(), start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop_group(proc)
        return 130
    finally:
        if proc.poll() is None:
            _stop_group(proc)
