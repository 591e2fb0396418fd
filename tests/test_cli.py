"""The `auxray` command line as a user meets it: bad input, JSON summaries, resume, every shipped config."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from auxray.cli import run as cli_run
from auxray.config import config_from_dict
from auxray.data import build_data
from auxray.train.loop import BilevelTrainer
from tests.conftest import REPO, tiny_cifar_raw


def auxray(*args: str, cwd: Path = REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "auxray.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def write_config(tmp_path: Path, raw: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def in_process(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """`auxray ARGS` through the CLI's own entry (parser, handlers, exit code) in this process: for input errors
    found after torch is imported, which a new process would spend seconds importing first."""
    capsys.readouterr()
    code = cli_run(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["auxray", *args], code, out.out, out.err)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_config_file(tmp_path):
    assert_one_line_error(auxray("train", str(tmp_path / "nope.yaml")), "config file not found")


def test_unknown_key_is_named(tmp_path, cifar_zip):
    raw = tiny_cifar_raw(cifar_zip, tmp_path)
    raw["trainer"]["epochz"] = 3
    assert_one_line_error(auxray("train", str(write_config(tmp_path, raw))), "trainer.epochz", "unknown key")


def test_invalid_value_and_bad_override(tmp_path, cifar_zip):
    path = write_config(tmp_path, tiny_cifar_raw(cifar_zip, tmp_path))
    assert_one_line_error(auxray("train", str(path), "--set", "trainer.lr=-1"), "trainer.lr")
    assert_one_line_error(auxray("train", str(path), "--set", "method.name=bogus"), "method.name")
    assert_one_line_error(auxray("train", str(path), "--set", "nonsense"), "key=value")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_missing_data_path_writes_nothing_with_tracking_on(tmp_path, cifar_zip, workers, capsys, monkeypatch):
    """With tracking on (the default), a missing data root is one line before any run folder, MLflow store or
    MLflow run exists (in one process, and before Ray starts for a data-parallel run)."""
    raw = tiny_cifar_raw(cifar_zip, tmp_path)
    raw["data"]["root"] = str(tmp_path / "no-such-data.zip")
    raw["tracking"] = {}
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    proc = in_process(capsys, "train", str(write_config(tmp_path, raw)), "--workers", workers)
    assert_one_line_error(proc, "no-such-data.zip")
    assert not any(work.iterdir()) and not (tmp_path / "runs").exists()


def test_unreachable_tracking_server_is_one_line_before_training(tmp_path, cifar_zip, capsys):
    """`auxray train --tracking-uri` naming a server nobody listens on: one line, exit 2, no run folder."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    raw = tiny_cifar_raw(cifar_zip, tmp_path)
    raw["tracking"] = {}
    proc = in_process(capsys, "train", str(write_config(tmp_path, raw)), "--tracking-uri", f"http://127.0.0.1:{port}")
    assert_one_line_error(proc, "unreachable", str(port))
    assert not (tmp_path / "runs").exists()


def test_a_run_that_diverges_stops_with_one_line_and_keeps_what_it_wrote(tmp_path, cifar_zip, capsys):
    """A learning rate that sends the loss to NaN or infinity stops the run at that step (exit 2, one line naming the
    epoch, step and losses) rather than training on to a chance-level model; its run folder and config stay."""
    raw = tiny_cifar_raw(cifar_zip, tmp_path)
    raw["trainer"]["lr"] = 1e12
    proc = in_process(capsys, "train", str(write_config(tmp_path, raw)), "--no-progress")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [proc.stderr.splitlines()[-1]], proc.stderr
    assert "training diverged at epoch 1, step " in errors[0] and "main_loss nan" in errors[0]
    (run_dir,) = (tmp_path / "runs" / "run").iterdir()
    assert (run_dir / "config.json").is_file()


def test_a_gpu_this_machine_lacks_is_one_line(tmp_path, cifar_zip, capsys):
    """trainer.device or --gpus-per-worker naming more GPUs than the machine has (on a machine without one: any) is
    one line and exit 2, before a run folder exists (one index or GPU past the last, so it holds on any machine)."""
    path = write_config(tmp_path, tiny_cifar_raw(cifar_zip, tmp_path))
    gpus = torch.cuda.device_count()
    device = "cuda" if gpus == 0 else f"cuda:{gpus}"
    assert_one_line_error(
        in_process(capsys, "train", str(path), "--set", f"trainer.device={device}"), "trainer.device", "GPU"
    )
    assert_one_line_error(
        in_process(capsys, "train", str(path), "--workers", "2", "--gpus-per-worker", str(gpus + 1)),
        "--gpus-per-worker",
        f"this machine has {gpus}",
    )
    assert not (tmp_path / "runs").exists()


def test_resume_with_nothing_to_resume_writes_nothing_with_tracking_on(tmp_path, cifar_zip, capsys, monkeypatch):
    raw = tiny_cifar_raw(cifar_zip, tmp_path)
    raw["tracking"] = {}
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert_one_line_error(
        in_process(capsys, "train", str(write_config(tmp_path, raw)), "--resume"), "nothing to resume"
    )
    assert not any(work.iterdir()) and not (tmp_path / "runs").exists()


def test_malformed_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: [unclosed\n")
    assert_one_line_error(auxray("train", str(path)), "not valid YAML")


TIMING = ("epoch_seconds", "steps_per_second", "outer_step_seconds", "fork_seconds")


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def leaves(obj: object) -> list:
    """The values of a nested checkpoint structure (dicts, lists, tuples), in order."""
    if isinstance(obj, dict):
        return [leaf for key in obj for leaf in leaves(obj[key])]
    if isinstance(obj, (list, tuple)):
        return [leaf for item in obj for leaf in leaves(item)]
    return [obj]


def kill_once_checkpointed(args: tuple[str, ...], killed_at: Path, cwd: Path) -> tuple[Path, int]:
    """Start `auxray ARGS` writing under killed_at, SIGKILL it once its first latest.pt exists; its run folder and
    the epoch that checkpoint holds (the run must not have ended first)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "auxray.cli", *args, "--set", f"trainer.checkpoint_dir={killed_at}"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list(killed_at.glob("*/*/latest.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    (run_dir,) = killed_at.glob("*/*")
    epoch_at_kill = torch.load(run_dir / "latest.pt", weights_only=True)["epoch"]
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    return run_dir, epoch_at_kill


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same W, phi, optimizers, counters and (timings aside) history, bit for bit."""
    for key in ("model", "auxnet", "opt_w", "phi", "sched_w"):
        flat_a, flat_b = leaves(a[key]), leaves(b[key])
        assert len(flat_a) == len(flat_b) > 0, key
        for x, y in zip(flat_a, flat_b, strict=True):
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, key
    assert (a["epoch"], a["step"], a["hypergrad_norms"]) == (b["epoch"], b["step"], b["hypergrad_norms"])
    assert untimed(a["history"]) == untimed(b["history"])


def test_killed_run_resumes_to_the_uninterrupted_result_bit_for_bit(tmp_path, cifar_zip, capsys, monkeypatch):
    """SIGKILL `auxray train` mid-training, then `--resume`: the run ends with the same W, phi, optimizers, history
    and test accuracy as an uninterrupted one, lists every epoch once in metrics.jsonl and says where it resumed.
    latest.pt is written every 2 epochs (checkpoint_every), so the resumed run trains some epochs again. The run that
    is killed is its own process; the others go through the same CLI entry in this one (torch imported once)."""
    from mlflow import MlflowClient

    raw = tiny_cifar_raw(cifar_zip, tmp_path, name="auxilearn_combine", aux_task="rotation")
    raw["trainer"].update(epochs=6, checkpoint_every=2)
    raw["tracking"] = {"experiment": "kill-resume"}  # tracking on, in the default store: ./mlflow.db
    path = write_config(tmp_path, raw)
    args = ("train", str(path), "--json", "--no-progress")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    t0 = time.monotonic()
    full = last_json(in_process(capsys, *args, "--set", f"trainer.checkpoint_dir={tmp_path / 'full'}"))
    wall = time.monotonic() - t0
    full_dir = Path(full["run_dir"])
    history = [json.loads(line) for line in (full_dir / "metrics.jsonl").read_text().splitlines()]
    assert full["resumed_from"] == [] and full["epochs"] == 6 and [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert sum(h["epoch_seconds"] for h in history) < full["seconds"] < wall

    killed_at = tmp_path / "killed"
    run_dir, epoch_at_kill = kill_once_checkpointed(args, killed_at, work)
    assert epoch_at_kill < 6, "the run ended before it was killed"

    resumed = last_json(in_process(capsys, *args, "--resume", "--set", f"trainer.checkpoint_dir={killed_at}"))
    assert resumed["run_dir"] == str(run_dir) and resumed["resumed_from"] == [epoch_at_kill]
    for key in ("test_accuracy", "final_test_accuracy", "best_val_accuracy", "best_epoch", "steps"):
        assert resumed[key] == full[key], key
    assert_same_state(
        torch.load(run_dir / "latest.pt", weights_only=True), torch.load(full_dir / "latest.pt", weights_only=True)
    )
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in logged] == [1, 2, 3, 4, 5, 6]
    assert untimed(logged) == untimed(history)

    # MLflow: the resumed run went on logging to the killed run's MLflow run, each epoch once, the same values.
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "kill-resume"]
    runs = {r.data.tags["auxray.run_dir"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {full["run_dir"], resumed["run_dir"]}
    assert runs[resumed["run_dir"]].info.run_id == resumed["mlflow_run_id"] != full["mlflow_run_id"]
    for result in (full, resumed):
        record = client.get_run(result["mlflow_run_id"])
        assert record.info.status == "FINISHED" and record.data.metrics["test_accuracy"] == full["test_accuracy"]
        logged_val = client.get_metric_history(result["mlflow_run_id"], "val_accuracy")
        assert [(m.step, m.value) for m in logged_val] == [(h["epoch"], h["val_accuracy"]) for h in history]

    # test_accuracy is the best-on-validation weights' (best.pt), final_test_accuracy the last epoch's.
    cfg = config_from_dict(raw)
    trainer = BilevelTrainer(cfg, build_data(cfg.data, cfg.method.aux_tasks), progress=False)
    best = torch.load(full_dir / "best.pt", weights_only=True)
    val = [h["val_accuracy"] for h in history]
    assert best["epoch"] == full["best_epoch"] == val.index(max(val)) + 1
    latest = torch.load(full_dir / "latest.pt", weights_only=True)
    for key, weights in (("test_accuracy", best["model"]), ("final_test_accuracy", latest["model"])):
        trainer.model.load_state_dict(weights)
        assert trainer.evaluate(trainer.data.test)["accuracy"] == full[key], key

    # Resuming a finished run trains nothing more and reports the same result.
    again = last_json(in_process(capsys, *args, "--resume", "--set", f"trainer.checkpoint_dir={tmp_path / 'full'}"))
    assert again["run_dir"] == full["run_dir"] and again["test_accuracy"] == full["test_accuracy"]
    assert again["mlflow_run_id"] == full["mlflow_run_id"]
    assert len(client.get_metric_history(full["mlflow_run_id"], "val_accuracy")) == 6
    assert again["resumed_from"] == [6] and len((full_dir / "metrics.jsonl").read_text().splitlines()) == 6
