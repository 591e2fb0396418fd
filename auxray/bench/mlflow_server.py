"""A real `mlflow server` for benches and tests: SQLite backend, local artifact folder, 127.0.0.1 only, in its own
process group (its web workers are children) so that it can be killed whole and started again on the same port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from auxray.tracking.ui import ui_env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int, timeout: float = 1.0) -> bool:
    """Whether the server on `port` answers /health with 200."""
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    """Poll /health until it answers (bounded); RuntimeError with the log's tail when the process dies or never
    answers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
        if healthy(port):
            return
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not come up in {seconds:.0f}s: {log.read_text()[-2000:]}")


def start_server(db: Path, artifacts: Path, port: int, log: Path) -> subprocess.Popen:
    """`mlflow server` over `db` (SQLite) and `artifacts` on 127.0.0.1:`port`, returned once /health answers."""
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{db}",
                "--artifacts-destination",
                str(artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=ui_env(),
        )
    try:
        wait_healthy(port, proc, log)
    except RuntimeError:
        kill_group(proc)
        raise
    return proc


def kill_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL the process group `proc` leads (started with start_new_session) and reap `proc`."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)
