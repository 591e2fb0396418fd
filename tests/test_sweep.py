"""Sweeps: config validation, search spaces and result summaries (fast); and, marked cluster, real sweeps on
Ray Tune against a real MLflow server: parent/child runs, kill -9 of the driver then --resume, the MLflow UI
in headless Chromium, and the unreachable-server check."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from auxray.bench.mlflow_server import free_port, kill_group, start_server
from auxray.bench.sweep_faults import ray_session_processes
from auxray.cli import run as cli_run
from auxray.errors import UserError
from auxray.tune.config import SweepConfig, load_sweep
from tests.conftest import CACHE_DIR, REPO, chromium, tiny_cifar_raw

ARTIFACTS = REPO / "test-artifacts"


# ---- helpers -----------------------------------------------------------------------------------
def write_sweep(
    tmp_path: Path,
    cifar_zip: Path,
    *,
    name: str = "tiny",
    trials: int = 4,
    concurrency: int = 2,
    uri: str | None = None,
    space: dict | None = None,
    epochs: int = 2,
    **extra: Any,
) -> Path:
    """A tiny real-CIFAR sweep: 10 labelled images per class, ConvNet-4 of width 8, 2 epochs, batch 16."""
    base = tiny_cifar_raw(cifar_zip, tmp_path, name="auxilearn_combine", aux_task="rotation")
    base["data"]["labeled_per_class"] = 10
    base["trainer"].pop("checkpoint_dir")
    base["trainer"]["threads"] = 1
    base["tracking"] = {"experiment": f"sweep-{name}"}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "name": name,
        "base": "base.yaml",
        "overrides": {"data.cache_dir": str(CACHE_DIR), "trainer.epochs": epochs},
        "space": space
        or {
            "outer.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "hypergrad.steps": {"type": "int", "low": 1, "high": 3},
            "method.combiner": {"type": "choice", "values": ["linear", "nonlinear"]},
        },
        "trials": trials,
        "concurrency": concurrency,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "storage": str(tmp_path / "sweeps"),
        "tracking": {"uri": uri} if uri else {},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def start_mlflow(tmp: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a SQLite backend in tmp, on a free loopback port; returns it once /health answers."""
    port = free_port()
    proc = start_server(tmp / "m.db", tmp / "artifacts", port, tmp / "mlflow.log")
    return proc, f"http://127.0.0.1:{port}"


def sweep_cmd(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "auxray.cli", "sweep", str(path), *args]


def sweep_runs(uri: str, experiment: str) -> tuple[list[Any], list[Any]]:
    """(parents, children) of an experiment."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} was not created"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("auxray.kind") == "sweep"]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, kids


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def last_json_line(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line in output:\n{text[-3000:]}"
    return json.loads(lines[-1])


# ---- fast: validation, spaces, summaries --------------------------------------------------------
def test_sweep_config_validates_keys_and_values(
    tmp_path: Path, cifar_zip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_sweep(tmp_path, cifar_zip)
    sweep = load_sweep(path)
    assert sweep.epochs == 2 and sweep.experiment_dir == (tmp_path / "sweeps" / "tiny")
    cfg = sweep.trial_config({"outer.lr": 0.003, "hypergrad.steps": 2, "method.combiner": "linear"})
    assert (cfg.outer.lr, cfg.hypergrad.steps, cfg.method.combiner) == (0.003, 2, "linear")
    assert Path(cfg.data.root).is_absolute() and cfg.data.cache_dir == str(CACHE_DIR)

    # Relative paths resolve against the directory the sweep was loaded from, even after the process moves (a
    # Ray Tune trial runs in its own working directory).
    monkeypatch.chdir(tmp_path)
    relative = load_sweep(write_sweep(tmp_path, cifar_zip, name="relative", storage="rel-sweeps"))
    elsewhere = tmp_path / "trial-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    raw = relative.base_raw()
    raw["data"]["root"] = os.path.relpath(cifar_zip, tmp_path)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(raw))
    assert relative.trial_config({}).data.root == str(cifar_zip)
    assert relative.experiment_dir == tmp_path / "rel-sweeps" / "relative"
    monkeypatch.chdir(tmp_path)

    bad_key = write_sweep(
        tmp_path, cifar_zip, name="badkey", space={"hypergrad.stepz": {"type": "int", "low": 1, "high": 3}}
    )
    with pytest.raises(UserError, match="hypergrad.stepz"):
        load_sweep(bad_key)
    old_key = write_sweep(
        tmp_path, cifar_zip, name="oldkey", space={"method.aux_lr": {"type": "choice", "values": [0.1]}}
    )
    with pytest.raises(UserError, match=r"^sweep oldkey: space key method\.aux_lr moved to outer\.lr$"):
        load_sweep(old_key)
    old_data_key = write_sweep(
        tmp_path, cifar_zip, name="olddata", space={"data.aux_fraction": {"type": "choice", "values": [0.2]}}
    )
    with pytest.raises(UserError, match=r"^sweep olddata: space key data\.aux_fraction moved to data\.outer_fraction$"):
        load_sweep(old_data_key)
    bad_value = write_sweep(
        tmp_path, cifar_zip, name="badvalue", space={"trainer.lr": {"type": "uniform", "low": -0.1, "high": 0.1}}
    )
    with pytest.raises(UserError, match="trainer.lr"):
        load_sweep(bad_value)
    bad_choice = write_sweep(
        tmp_path,
        cifar_zip,
        name="badchoice",
        space={"method.combiner": {"type": "choice", "values": ["linear", "quadratic"]}},
    )
    with pytest.raises(UserError, match="combiner"):
        load_sweep(bad_choice)
    unknown = write_sweep(tmp_path, cifar_zip, name="unknown", trails=3)
    with pytest.raises(UserError, match="trails: unknown key"):
        load_sweep(unknown)
    assert cli_run(["sweep", str(bad_key)]) == 2


def test_bad_sweep_input_is_one_line(
    tmp_path: Path, cifar_zip: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`auxray sweep` on a missing or malformed file, a missing base config, --resume with nothing to resume, a
    sweep that exists already, or a base config whose data is missing: one line on stderr, exit code 2, an existing
    sweep's folder left as it was, and no MLflow run opened."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"

    def error(*args: str) -> str:
        capsys.readouterr()
        code = cli_run(["sweep", *args])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1, lines
        return lines[0]

    assert "not found" in error(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    assert "YAML" in error(str(tmp_path / "bad.yaml"))
    path = write_sweep(tmp_path, cifar_zip)
    (tmp_path / "base.yaml").rename(tmp_path / "moved.yaml")
    assert "base.yaml" in error(str(path))
    (tmp_path / "moved.yaml").rename(tmp_path / "base.yaml")
    assert "nothing to resume" in error(str(path), "--resume", "--tracking-uri", uri)
    existing = load_sweep(path).experiment_dir
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("earlier results")
    assert "already exists" in error(str(path), "--tracking-uri", uri)
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    # The base config's data is checked once, before Ray starts or a parent run is opened (not in every trial).
    (tmp_path / "nodata").mkdir()
    missing = write_sweep(tmp_path / "nodata", tmp_path / "nope" / "cifar10-images.zip", name="nodata")
    assert str(tmp_path / "nope" / "cifar10-images.zip") in error(str(missing), "--tracking-uri", uri)
    assert MlflowClient(tracking_uri=uri).get_experiment_by_name("sweep-nodata") is None


def test_trials_ask_ray_for_their_gpu_share_and_a_missing_gpu_is_one_line(tmp_path: Path, cifar_zip: Path) -> None:
    from auxray.tune.sweep import check_gpus, trial_resources

    cpu_only = load_sweep(write_sweep(tmp_path, cifar_zip, cpus_per_trial=0.5))
    assert trial_resources(cpu_only) == {"cpu": 0.5}
    check_gpus(cpu_only, have=0.0)
    shared = load_sweep(write_sweep(tmp_path, cifar_zip, name="gpu", cpus_per_trial=2, gpus_per_trial=0.25))
    assert trial_resources(shared) == {"cpu": 2.0, "gpu": 0.25}
    check_gpus(shared, have=1.0)
    with pytest.raises(UserError, match=r"^gpus_per_trial is 0.25 but the Ray cluster has 0 GPUs$"):
        check_gpus(shared, have=0.0)
    with pytest.raises(UserError, match="gpus_per_trial"):
        load_sweep(write_sweep(tmp_path, cifar_zip, name="negative", gpus_per_trial=-1))


def test_search_spaces_match_the_sweep() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from auxray.tune.space import optuna_distribution, scheduler_for, tune_domain

    sweep = SweepConfig.model_validate(
        {
            "base": "x.yaml",
            "name": "s",
            "space": {
                "a": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
                "b": {"type": "int", "low": 1, "high": 5},
                "c": {"type": "choice", "values": ["linear", "deep"]},
                "d": {"type": "uniform", "low": 0.0, "high": 1.0},
            },
        }
    )
    dists = {k: optuna_distribution(v) for k, v in sweep.space.items()}
    assert dists["a"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["b"] == IntDistribution(1, 5)
    assert dists["c"] == CategoricalDistribution(["linear", "deep"])
    assert dists["d"] == FloatDistribution(0.0, 1.0)
    ints = {tune_domain(sweep.space["b"]).sample() for _ in range(300)}
    assert ints == {1, 2, 3, 4, 5}
    assert type(scheduler_for(sweep, 4)).__name__ == "AsyncHyperBandScheduler"
    sweep.scheduler.type = "none"
    assert type(scheduler_for(sweep, 4)).__name__ == "FIFOScheduler"


def test_asha_stops_a_trial_below_the_rung_median_after_the_grace_period() -> None:
    """The sweep's ASHA (grace period 1, reduction factor 2, metric val_accuracy, mode max) lets the first trial at
    epoch 1 through, stops a later one scoring below the median of those before it and keeps those above it."""
    from ray.tune.schedulers import TrialScheduler

    from auxray.tune.space import scheduler_for

    sweep = SweepConfig.model_validate(
        {
            "base": "x.yaml",
            "name": "s",
            "metric": "val_accuracy",
            "mode": "max",
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "space": {"trainer.lr": {"type": "uniform", "low": 0.01, "high": 0.1}},
        }
    )
    scheduler = scheduler_for(sweep, 3)
    scheduler.set_search_properties(sweep.metric, sweep.mode)
    trials = {name: SimpleNamespace(trial_id=name) for name in ("first", "weak", "strong", "late")}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)

    def decide(name: str, epoch: int, accuracy: float) -> str:
        return scheduler.on_trial_result(None, trials[name], {"training_iteration": epoch, "val_accuracy": accuracy})

    assert decide("first", 1, 0.30) == TrialScheduler.CONTINUE
    assert decide("weak", 1, 0.10) == TrialScheduler.STOP
    assert decide("strong", 1, 0.50) == TrialScheduler.CONTINUE
    assert decide("late", 1, 0.40) == TrialScheduler.CONTINUE  # above the median of 0.30, 0.10, 0.50


def test_summary_picks_the_best_completed_trial() -> None:
    from auxray.tune.sweep import summarise_grid

    def result(tid: str, epoch: int, best: float, test: float | None = None, error: bool = False) -> Any:
        metrics = {"trial_id": tid, "epoch": epoch, "best_val_accuracy": best, "val_accuracy": best}
        if test is not None:
            metrics["test_accuracy"] = test
        return SimpleNamespace(
            metrics=metrics, config={"trainer.lr": 0.01}, path=f"/x/{tid}", error=RuntimeError() if error else None
        )

    sweep = SweepConfig.model_validate(
        {"base": "x.yaml", "name": "s", "space": {"trainer.lr": {"type": "uniform", "low": 0.01, "high": 0.1}}}
    )
    grid = [result("a", 1, 0.9), result("b", 3, 0.5, 0.48), result("c", 3, 0.6, 0.55), result("d", 0, 0, error=True)]
    summary = summarise_grid(grid, sweep, epochs=3)
    assert summary["best"]["trial_id"] == "c" and summary["best"]["test_accuracy"] == 0.55
    assert (summary["trials"], summary["completed"], summary["stopped_early"], summary["errored"]) == (4, 2, 1, 1)
    assert summary["trial_epochs"] == 7 and summary["budget_epochs"] == 12


@pytest.mark.timeout(120)
def test_unreachable_tracking_server_exits_2_before_ray(tmp_path: Path, cifar_zip: Path) -> None:
    path = write_sweep(tmp_path, cifar_zip, uri=f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    proc = subprocess.run(sweep_cmd(path), capture_output=True, text=True, timeout=110, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unreachable" in lines[0], proc.stderr
    assert time.monotonic() - t0 < 100
    assert not (tmp_path / "sweeps").exists(), "the sweep started before checking the tracking server"


def test_unreachable_server_checked_before_ray_starts(
    tmp_path: Path, cifar_zip: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import auxray.tune.sweep as sweep_module

    calls = []
    monkeypatch.setattr(sweep_module, "start_ray", lambda: calls.append(1) or False)
    path = write_sweep(tmp_path, cifar_zip)
    assert cli_run(["sweep", str(path), "--tracking-uri", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("auxray: error: MLflow tracking server") and not calls


# ---- cluster: real sweeps against a real MLflow server --------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("mlflow")
    proc, uri = start_mlflow(tmp)
    yield SimpleNamespace(uri=uri, tmp=tmp)
    kill_group(proc)


@pytest.fixture(scope="module")
def finished_sweep(server: SimpleNamespace, cifar_zip: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 4-trial sweep run to the end through the CLI."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = write_sweep(tmp, cifar_zip, name="tiny4", trials=4)
    proc = subprocess.run(
        sweep_cmd(path, "--tracking-uri", server.uri, "--json"), capture_output=True, text=True, timeout=420, cwd=tmp
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return SimpleNamespace(result=last_json_line(proc.stdout), stderr=proc.stderr, tmp=tmp, path=path)


@pytest.mark.cluster
@pytest.mark.timeout(480)
def test_sweep_logs_parent_and_children(server: SimpleNamespace, finished_sweep: SimpleNamespace) -> None:
    result = finished_sweep.result
    assert result["trials"] == 4 and result["errored"] == 0
    assert set(result["best"]["params"]) == {"outer.lr", "hypergrad.steps", "method.combiner"}
    # Each trial ran to the end (2 epochs) or ASHA stopped it at its rung (1 epoch); the summary counts both.
    epochs = sorted(row["epochs"] for row in result["per_trial"])
    assert set(epochs) <= {1, 2} and epochs[-1] == 2 and result["trial_epochs"] == sum(epochs)
    assert (result["completed"], result["stopped_early"]) == (epochs.count(2), epochs.count(1))
    # The best trial is the completed one with the highest validation accuracy, tested on the 200 test images.
    rows = {row["trial_id"]: row for row in result["per_trial"]}
    complete = [row for row in rows.values() if row["epochs"] == 2]
    best = rows[result["best"]["trial_id"]]
    assert best["epochs"] == 2 and best["val_accuracy"] == max(row["val_accuracy"] for row in complete)
    correct = 200 * best["test_accuracy"]
    assert result["best"]["test_accuracy"] == best["test_accuracy"] and correct == pytest.approx(round(correct))
    # One progress line per trial, in the order they ended, each with that trial's epochs and best val accuracy.
    progress = re.findall(
        r"^trial (\S+) \[(\d+)/4\] epochs (\d)/2  best val (\S+)(.*)$", finished_sweep.stderr, re.MULTILINE
    )
    assert [int(done) for _, done, *_ in progress] == [1, 2, 3, 4], finished_sweep.stderr[-3000:]
    assert sorted(tid for tid, *_ in progress) == sorted(rows)
    for tid, _, epoch, val, rest in progress:
        assert int(epoch) == rows[tid]["epochs"] and val == f"{rows[tid]['val_accuracy']:.4f}"
        tested = f"  test {rows[tid]['test_accuracy']:.4f}" if rows[tid]["epochs"] == 2 else ""
        assert rest.startswith(tested) and ("(stopped early)" in rest) == (rows[tid]["epochs"] == 1), rest
    for row in result["per_trial"]:
        files = Path(result["experiment_dir"]) / "trials" / row["trial_id"]
        assert len((files / "metrics.jsonl").read_text().splitlines()) == row["epochs"]

    parents, kids = sweep_runs(server.uri, "sweep-tiny4")
    assert len(parents) == 1 and parents[0].info.run_name == "tiny4" and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["best_val_accuracy"] == pytest.approx(result["best"]["val_accuracy"])
    assert len(kids) == 4
    client = MlflowClient(tracking_uri=server.uri)
    trial_ids = {k.data.tags["auxray.trial_id"] for k in kids}
    assert len(trial_ids) == 4
    for kid in kids:
        assert kid.info.status == "FINISHED", (kid.info.run_name, kid.info.status)
        assert kid.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert kid.data.params["method.name"] == "auxilearn_combine"
        epochs = steps_of(client, kid.info.run_id, "val_accuracy")
        assert epochs and epochs == sorted(set(epochs))
        artifacts = {a.path for a in client.list_artifacts(kid.info.run_id)}
        assert "config.yaml" in artifacts
        if epochs[-1] == 2:
            assert "test_accuracy" in kid.data.metrics and "auxray.stopped_early" not in kid.data.tags
            assert {"checkpoints", "metrics.jsonl"} <= artifacts
            assert {a.path for a in client.list_artifacts(kid.info.run_id, "checkpoints")} == {"checkpoints/best.pt"}
        else:
            assert kid.data.tags.get("auxray.stopped_early") == "true"


@pytest.mark.cluster
@pytest.mark.timeout(480)
def test_mlflow_ui_shows_the_sweep(server: SimpleNamespace, finished_sweep: SimpleNamespace) -> None:
    from playwright.sync_api import sync_playwright

    browser_path = chromium()
    client = MlflowClient(tracking_uri=server.uri)
    exp = client.get_experiment_by_name("sweep-tiny4")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "mlflow_ui.png"
    shot.unlink(missing_ok=True)
    parents, kids = sweep_runs(server.uri, "sweep-tiny4")
    names = [k.info.run_name for k in kids]
    url = f"{server.uri}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=browser_path,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url, wait_until="load", timeout=120_000)
            page.get_by_text("tiny4", exact=True).first.wait_for(timeout=90_000)
            parent_row = page.locator("[role=row]", has_text="tiny4").first
            parent_row.locator("button[data-component-id*='runnamecellrenderer']").first.click()
            for name in names:
                page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=str(shot), full_page=False)
            text = page.inner_text("body")
        finally:
            browser.close()
    assert parents[0].info.run_name in text
    assert all(name in text for name in names), (names, text[:2000])
    assert shot.is_file() and shot.stat().st_size > 10_000


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_kill_driver_then_resume(server: SimpleNamespace, cifar_zip: Path, tmp_path: Path) -> None:
    trials, epochs = 3, 2
    path = write_sweep(
        tmp_path, cifar_zip, name="resumable", trials=trials, concurrency=1, epochs=epochs, scheduler={"type": "none"}
    )
    experiment = "sweep-resumable"
    log = open(tmp_path / "driver1.log", "w")
    driver = subprocess.Popen(
        sweep_cmd(path, "--tracking-uri", server.uri),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,
    )
    client = MlflowClient(tracking_uri=server.uri)
    query = "attributes.status = '{}' and tags.`auxray.kind` = 'trial'"
    try:
        deadline = time.monotonic() + 400
        done: list = []
        running: list = []
        while time.monotonic() < deadline and driver.poll() is None and not (done and running):
            exp = client.get_experiment_by_name(experiment)
            if exp is not None:
                done = client.search_runs([exp.experiment_id], query.format("FINISHED"))
                running = client.search_runs([exp.experiment_id], query.format("RUNNING"))
            time.sleep(0.3)
        assert driver.poll() is None, f"driver ended first:\n{(tmp_path / 'driver1.log').read_text()[-3000:]}"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        finished_before = {
            r.data.tags["auxray.trial_id"] for r in client.search_runs([exp.experiment_id], query.format("FINISHED"))
        }
        assert 1 <= len(finished_before) < trials
        deadline = time.monotonic() + 60
        while ray_session_processes(driver.pid) and time.monotonic() < deadline:
            time.sleep(1)
        assert not ray_session_processes(driver.pid), "Ray processes outlived the killed driver"
    finally:
        kill_group(driver)
    _, kids = sweep_runs(server.uri, experiment)
    assert any(k.info.status == "RUNNING" for k in kids), "the killed driver left no in-flight trial"

    resumed = subprocess.run(
        sweep_cmd(path, "--tracking-uri", server.uri, "--resume", "--json"),
        capture_output=True,
        text=True,
        timeout=420,
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    result = last_json_line(resumed.stdout)
    assert result["resumed"] and result["trials"] == trials and result["errored"] == 0
    assert result["completed"] == trials and result["trial_epochs"] == trials * epochs

    parents, kids = sweep_runs(server.uri, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    tune_trials = {row["trial_id"] for row in result["per_trial"]}
    assert len(tune_trials) == trials and finished_before <= tune_trials
    finished = [k for k in kids if k.info.status == "FINISHED"]
    assert sorted(k.data.tags["auxray.trial_id"] for k in finished) == sorted(tune_trials)
    others = [k for k in kids if k.info.status != "FINISHED"]
    assert all(k.info.status == "FAILED" and k.data.tags.get("auxray.orphaned") for k in others)
    assert result.get("orphaned_runs", 0) == len(others) <= 1
    by_trial = {k.data.tags["auxray.trial_id"]: [k] for k in finished}
    for tid in finished_before:
        kid = by_trial[tid][0]
        assert steps_of(client, kid.info.run_id, "val_accuracy") == list(range(1, epochs + 1)), tid
        trial_dir = tmp_path / "sweeps" / "resumable" / "trials" / tid
        starts = [json.loads(line)["start_epoch"] for line in (trial_dir / "attempts.jsonl").read_text().splitlines()]
        assert starts[0] == 0 and all(s == epochs for s in starts[1:]), f"completed trial {tid} trained again: {starts}"


def test_jobs_shim_exists() -> None:
    shim = REPO / "jobs" / "sweep.py"
    assert shim.is_file()
    proc = subprocess.run([sys.executable, str(shim), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--resume" in proc.stdout
