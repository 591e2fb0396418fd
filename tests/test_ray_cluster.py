"""Joining Ray (auxray.train.ray_cluster): with no address and no RAY_ADDRESS a run starts its own local instance,
even while `ray start` has left a cluster on the machine, which Ray's own ray.init() would join instead (and then
refuse the num_cpus a local run asks for)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_cluster import ray_cli

PROBE = (
    "import ray\n"
    "from auxray.train.ray_cluster import ensure_ray\n"
    "started = ensure_ray(None, num_cpus=1)\n"
    "print('AUXRAY_GCS', started, ray.get_runtime_context().gcs_address)\n"
)


@pytest.mark.slow
def test_a_run_without_an_address_starts_its_own_instance_beside_a_ray_start_cluster() -> None:
    # A private temp folder (RAY_TMPDIR) holds the `ray start` cluster's record of itself, which is what Ray's
    # auto-detection reads, so the probe sees this cluster and no other test's; short, as Ray's sockets need.
    tmp = tempfile.mkdtemp(prefix="axr-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [ray_cli(), "start", "--head", "--block", "--port", "0", "--num-cpus", "1",
         "--object-store-memory", str(80 * 1024 * 1024), "--include-dashboard", "false",
         "--node-ip-address", "127.0.0.2", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        record = Path(tmp) / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 120
        while not record.is_file() and head.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert record.is_file(), "ray start did not come up"
        cluster = record.read_text().strip()
        probe = subprocess.run(
            [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
        )
        assert probe.returncode == 0, probe.stderr[-3000:]
        line = next(ln for ln in probe.stdout.splitlines() if ln.startswith("AUXRAY_GCS"))
        _, started, address = line.split()
        assert started == "True" and address != cluster, (address, cluster)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
