"""`auxray ui`: the MLflow UI over the local store (or the address of a tracking server)."""

from __future__ import annotations

import signal
import subprocess
import sys

from auxray.tracking.uri import ARTIFACT_DIR, is_http, resolve_uri, sqlite_path


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow ui` command line for a database store (artifacts beside a SQLite file)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    db = sqlite_path(uri)
    if db is not None:
        cmd += ["--default-artifact-root", (db.parent / ARTIFACT_DIR).as_uri()]
    return cmd


def serve_ui(uri: str | None = None, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Run the MLflow UI in the foreground until Ctrl-C (forwarded to it) and return its exit code; for an
    HTTP tracking server just print its address, since it already serves the UI."""
    uri = resolve_uri(uri)
    if is_http(uri):
        print(f"MLflow UI: {uri}", flush=True)
        return 0
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        print(f"auxray: no runs tracked yet ({db} does not exist); the UI will be empty", file=sys.stderr, flush=True)
    print(f"MLflow UI for {uri}: http://{host}:{port}  (Ctrl-C to stop)", flush=True)
    proc = subprocess.Popen(ui_command(uri, host, port))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=10)
        return 130
