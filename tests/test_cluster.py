"""The README's two-node Ray cluster on this machine (deploy/local_cluster.sh), shared by every test here: the
README block's job and its results, both nodes alive, `ray status`, and `ray job submit` of jobs that succeed on the
worker node or fail.

Marked `cluster` (deselected by default; run with `pytest -m cluster tests/test_cluster.py`)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "local_cluster.sh"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}

pytestmark = pytest.mark.cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    return shutil.which("ray") or str(Path(sys.executable).with_name("ray"))  # the CLI beside this Python


class ClusterAddress(str):
    """The dashboard / job-submission address (use it as a plain str), plus `gcs_address` for
    `ray status` / `ray.init(address=...)` and `state_dir` (logs: head.log, worker.log, ray/)."""

    gcs_address: str
    state_dir: Path


@pytest.fixture(scope="module")
def readme_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The README's cluster block, run as written from the repository: every line but its last (start the cluster,
    submit the training job) now; the last (`deploy/local_cluster.sh stop`) when this module's tests are done, so
    that they all use this one cluster. HOME is a fresh folder, so that ~/auxray starts empty. Yields the block's
    outcome, HOME and the cluster's addresses."""
    block = readme_block("## On a Ray cluster")
    *run_lines, stop_line = block.splitlines()
    assert "jobs/train.py" in block and stop_line.startswith("deploy/local_cluster.sh stop")
    home = tmp_path_factory.mktemp("home")
    (home / ".cache").mkdir()
    (REPO / ".auxray_cache").mkdir(exist_ok=True)
    (home / ".cache" / "auxray").symlink_to(REPO / ".auxray_cache", target_is_directory=True)  # decoded CIFAR-10
    # Short path under /tmp: Ray's Unix sockets live under it and must stay < 108 bytes.
    state_dir = Path(tempfile.mkdtemp(prefix="auxray-rm-", dir="/tmp"))
    env = {
        **os.environ,
        "HOME": str(home),
        "AUXRAY_CLUSTER_DIR": str(state_dir),
        "RAY_OBJECT_STORE_MB": "150",
        "RAY_START_TIMEOUT": "180",
    }
    for key in ("RAY_ADDRESS", "AUXRAY_STORAGE", "MLFLOW_TRACKING_URI", "XDG_CACHE_HOME"):
        env.pop(key, None)
    try:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", "\n".join(run_lines)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        info = dict(ln.split("=", 1) for ln in (state_dir / "cluster.env").read_text().splitlines() if "=" in ln)
        address = ClusterAddress(info.get("RAY_ADDRESS", ""))
        address.gcs_address, address.state_dir = info.get("RAY_GCS_ADDRESS", ""), state_dir
        yield SimpleNamespace(proc=proc, home=home, address=address)
    finally:
        stop = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", stop_line],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        shutil.rmtree(state_dir, ignore_errors=True)
        assert stop.returncode == 0, f"{stop_line} failed:\n{stop.stdout}\n{stop.stderr}"


@pytest.fixture
def local_cluster(readme_cluster: SimpleNamespace) -> ClusterAddress:
    """The dashboard / job-submission address of the README's cluster (a plain str, plus gcs_address)."""
    assert readme_cluster.proc.returncode == 0, (readme_cluster.proc.stdout + readme_cluster.proc.stderr)[-3000:]
    return readme_cluster.address


def submit_job(
    address: str, entrypoint: Sequence[str] | str, working_dir: Path | str, timeout: float = 180.0
) -> tuple[str, str]:
    """`ray job submit --no-wait` ENTRYPOINT with WORKING_DIR uploaded, then wait (bounded) for a
    terminal state. Returns (status, logs); a job still running at the deadline is stopped and
    reported with its last status."""
    from ray.job_submission import JobSubmissionClient

    argv = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
    submission_id = f"auxray-test-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [
            ray_cli(),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(working_dir),
            "--submission-id",
            submission_id,
            "--no-wait",
            "--",
            *argv,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=min(timeout, 300),
    )
    assert proc.returncode == 0, f"ray job submit failed:\n{proc.stdout}\n{proc.stderr}"

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + timeout
    status = str(client.get_job_status(submission_id).value)
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(2)
        status = str(client.get_job_status(submission_id).value)
    if status not in TERMINAL:
        client.stop_job(submission_id)
    return status, client.get_job_logs(submission_id)


def readme_block(heading: str) -> str:
    """The first ```bash block after a README heading, as written."""
    text = (REPO / "README.md").read_text()
    after = text[text.index(heading) :]
    return after[after.index("```bash\n") + len("```bash\n") : after.index("\n```", after.index("```bash"))]


def test_readme_cluster_block_runs_verbatim_and_keeps_its_results(readme_cluster: SimpleNamespace) -> None:
    """The README's cluster block: the job succeeds and its checkpoint and MLflow run are under ~/auxray, not in the
    job's temporary working copy."""
    from mlflow import MlflowClient

    proc, home = readme_cluster.proc, readme_cluster.home
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in out, out[-4000:]
    storage = home / "auxray"
    (run_dir,) = (storage / "runs" / "cluster_demo").iterdir()
    assert {"best.pt", "metrics.jsonl", "config.json"} <= {p.name for p in run_dir.iterdir()}
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert list((storage / "runs" / "ray").glob("cluster_demo-*/epoch_00002/latest.pt")), out[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("auxray-demo").experiment_id])
    assert run.info.status == "FINISHED"
    assert {"test_accuracy", "final_test_accuracy", "val_accuracy", "allreduce_bytes"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "metrics.jsonl", "plots", "config.yaml"} <= names
    assert not (REPO / "mlflow.db").exists() or (REPO / "mlflow.db").stat().st_mtime < run.info.start_time / 1000


def test_cluster_has_two_alive_nodes(local_cluster: str) -> None:
    from ray.util.state import list_nodes

    nodes = list_nodes(address=local_cluster, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
    assert len(nodes) == 2, nodes
    assert sorted(n.is_head_node for n in nodes) == [False, True]
    worker = next(n for n in nodes if not n.is_head_node)
    assert worker.resources_total.get("auxray_worker_node") == 1.0
    # Both nodes are on a loopback address (see the comments in deploy/local_cluster.sh).
    assert all(n.node_ip.startswith("127.") for n in nodes), [n.node_ip for n in nodes]


def test_ray_status_lists_both_nodes(local_cluster: ClusterAddress) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    proc = subprocess.run(
        [ray_cli(), "status", "--address", local_cluster.gcs_address],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    active = proc.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
    assert len([ln for ln in active.splitlines() if ln.strip().startswith("1 node_")]) == 2, proc.stdout


def test_submitted_job_succeeds_on_the_worker_node(local_cluster: str, tmp_path: Path) -> None:
    work = tmp_path / "job"
    work.mkdir()
    (work / "hello.py").write_text(
        "import ray\n"
        "def main():\n"
        "    ray.init()\n"
        "    alive = [n for n in ray.nodes() if n['Alive']]\n"
        "    where = ray.remote(resources={'auxray_worker_node': 0.01})(\n"
        "        lambda: ray.get_runtime_context().get_node_id()).remote()\n"
        "    print('AUXRAY_HELLO nodes=%d worker=%s' % (len(alive), ray.get(where)))\n"
    )
    status, logs = submit_job(local_cluster, ["python", "-c", "import hello; hello.main()"], work, timeout=180)
    assert status == "SUCCEEDED", logs
    assert "AUXRAY_HELLO nodes=2 worker=" in logs, logs


def test_failing_job_is_reported_failed(local_cluster: str, tmp_path: Path) -> None:
    status, logs = submit_job(local_cluster, ["python", "-c", "raise SystemExit('AUXRAY_BOOM')"], tmp_path, timeout=120)
    assert status == "FAILED"
    assert "AUXRAY_BOOM" in logs
