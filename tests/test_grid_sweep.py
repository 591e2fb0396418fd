"""Grid sweeps (`search: grid`): every combination of the axes once, validated up front (fast), and a real tiny
grid on Ray Tune that runs each combination, records what a table needs, and resumes without re-running (slow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from auxray.cli import run as cli_run
from auxray.errors import UserError
from auxray.tune.config import load_sweep
from tests.conftest import CACHE_DIR, REPO, tiny_cifar_raw


def write_grid(tmp_path: Path, cifar_zip: Path, name: str = "grid", **extra: Any) -> Path:
    """Two run configs (stl, maxl) of a seconds-long real-CIFAR run, and a grid sweep over them and two seeds."""
    for method in ("stl", "maxl"):
        raw = tiny_cifar_raw(cifar_zip, tmp_path, name=method)
        raw["data"]["labeled_per_class"] = 10
        raw["trainer"].pop("checkpoint_dir")
        raw["trainer"].update(threads=1, epochs=1)
        raw.pop("hypergrad")  # each method's own hypergradient
        raw["tracking"] = {"experiment": f"grid-{name}"}
        (tmp_path / f"{method}.yaml").write_text(yaml.safe_dump(raw))
    sweep = {
        "name": name,
        "search": "grid",
        "grid": {"config": ["stl.yaml", "maxl.yaml"], "seed": [0, 1]},
        "overrides": {"data.cache_dir": str(CACHE_DIR)},
        "concurrency": 2,
        "storage": str(tmp_path / "sweeps"),
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_grid_is_every_combination_of_its_axes(tmp_path: Path, cifar_zip: Path) -> None:
    sweep = load_sweep(
        write_grid(
            tmp_path, cifar_zip, grid={"config": ["stl.yaml", "maxl.yaml"], "seed": [3, 4], "trainer.epochs": [1, 2]}
        )
    )
    assert sweep.trials == 8 and sweep.scheduler.type == "none" and sweep.epochs == 2
    combos = sweep.grid_params()
    assert len({json.dumps(c, sort_keys=True) for c in combos}) == 8
    cfg = sweep.trial_config({"config": "maxl.yaml", "seed": 4, "trainer.epochs": 2})
    assert (cfg.method.name, cfg.data.seed, cfg.trainer.seed, cfg.trainer.epochs) == ("maxl", 4, 4, 2)
    assert cfg.data.cache_dir == str(CACHE_DIR)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {"trainer.lr": {"type": "uniform", "low": 0.01, "high": 0.1}}}, "not `space`"),
        ({"search": "tpe"}, "`grid` axes need `search: grid`"),
        ({"grid": {"config": ["stl.yaml"], "trainer.lrr": [0.1]}}, "grid key 'trainer.lrr' is not a run config key"),
        ({"grid": {"config": ["stl.yaml"], "trainer.lr": [0.1, -1.0]}}, "trainer.lr"),
        ({"grid": {"config": ["stl.yaml", "nope.yaml"]}}, "grid config 'nope.yaml' is not a run config file"),
        ({"grid": {"config": ["stl.yaml"], "seed": [0, "one"]}}, "grid seed 'one' is not an integer"),
        ({"grid": {"seed": [0]}}, "needs `base` or a `config` axis"),
        ({"grid": {"config": []}}, "grid axis 'config' has no values"),
        ({"trials": 3}, "`trials` is the number of grid combinations"),
    ],
)
def test_bad_grid_is_one_line(
    tmp_path: Path, cifar_zip: Path, capsys: pytest.CaptureFixture, change: dict, message: str
) -> None:
    path = write_grid(tmp_path, cifar_zip, **change)
    with pytest.raises(UserError, match=message):
        load_sweep(path)
    capsys.readouterr()
    assert cli_run(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_grid_sweep_runs_each_combination_once_and_resumes(tmp_path: Path, cifar_zip: Path) -> None:
    from auxray.tune.record import read_record
    from auxray.tune.sweep import run_sweep

    sweep = load_sweep(write_grid(tmp_path, cifar_zip))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result = run_sweep(sweep, tracking_uri=uri, progress=False)
    assert (result["trials"], result["completed"], result["errored"]) == (4, 4, 0)
    assert sorted((r["params"]["config"], r["params"]["seed"]) for r in result["per_trial"]) == [
        ("maxl.yaml", 0),
        ("maxl.yaml", 1),
        ("stl.yaml", 0),
        ("stl.yaml", 1),
    ]
    for row in result["per_trial"]:
        trial_dir = sweep.trial_files_dir(row["trial_id"])
        record = read_record(trial_dir)
        assert record is not None and record["params"] == row["params"]
        assert record["summary"]["test_accuracy"] == row["test_accuracy"] and record["summary"]["seconds"] > 0
        assert record["diagnostics"]["sizes"]["test"] == 200
        assert ("labels" in record["diagnostics"]) == (row["params"]["config"] == "maxl.yaml")  # label generator

    from mlflow import MlflowClient

    runs = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("grid-grid").experiment_id]
    )
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result["parent_run_id"]]
    assert len(kids) == 4 and all(k.info.status == "FINISHED" for k in kids)

    # Every trial timed its phases; Tune ran later trials in the processes earlier ones started (reuse_actors).
    from auxray.bench.trial_cost import trial_phases

    pids: set[int] = set()
    phases = [trial_phases(sweep.trial_files_dir(r["trial_id"]), pids, 0.0) for r in result["per_trial"]]
    assert all(p[k] >= 0 for p in phases for k in ("startup", "tracking", "setup", "train", "loop")), phases
    assert all(p["train"] > 0 and p["epochs"] == 1 for p in phases), phases
    assert sum(not p["reused_process"] for p in phases) == len(pids) < 4, phases
    assert all(p["startup"] > 0 for p in phases if not p["reused_process"]), phases

    again = run_sweep(load_sweep(tmp_path / "grid.yaml"), resume=True, tracking_uri=uri, progress=False)
    assert again["resumed"] and again["completed"] == 4
    assert {r["trial_id"] for r in again["per_trial"]} == {r["trial_id"] for r in result["per_trial"]}
    for row in again["per_trial"]:  # nothing trained again
        attempts = (sweep.trial_files_dir(row["trial_id"]) / "attempts.jsonl").read_text().splitlines()
        assert len(attempts) == 1, row


def test_a_recorded_trial_reports_its_record_instead_of_training(tmp_path: Path) -> None:
    """A trial restored after it wrote its record (the driver died before Tune saved that it ended) reports the
    recorded result again; a record of other parameters is not its own."""
    from auxray.tune.record import RECORD_FILE, recorded_result

    params = {"config": "stl.yaml", "seed": 1}
    summary = {"test_accuracy": 0.4, "best_val_accuracy": 0.5, "epochs": 3, "seconds": 9.0, "run_dir": "x"}
    (tmp_path / RECORD_FILE).write_text(json.dumps({"params": params, "summary": summary}))
    result = recorded_result(tmp_path, params)
    assert result == {
        "test_accuracy": 0.4,
        "best_val_accuracy": 0.5,
        "epochs": 3,
        "seconds": 9.0,
        "epoch": 3,
        "val_accuracy": 0.5,
    }
    assert recorded_result(tmp_path, {**params, "seed": 2}) is None
    assert recorded_result(tmp_path / "none", params) is None


def test_trial_phases_split_a_trial_and_count_a_reused_process_once(tmp_path: Path) -> None:
    """Fast, from files: a trial's phases come from its timing line and its epoch times; a process an earlier trial
    started (or one started before the sweep) has no start-up; the summary takes medians and counts processes."""
    from auxray.bench.trial_cost import summarise_trials, trial_phases
    from auxray.tune.trial_clock import TIMING_FILE

    def trial(name: str, pid: int, process_start: float, entered: float, epoch_seconds: list[float]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        line = {
            "pid": pid,
            "process_start": process_start,
            "entered": entered,
            "child_run": entered + 0.5,
            "trainer": entered + 2.5,
            "trained": entered + 2.5 + sum(epoch_seconds) + 1.0,
            "start_epoch": 0,
        }
        (folder / TIMING_FILE).write_text(json.dumps(line) + "\n")
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch_seconds": s}) + "\n" for s in epoch_seconds))
        return folder

    pids: set[int] = set()
    first = trial_phases(trial("a", 7, 100.0, 104.0, [3.0, 3.0]), pids, since=99.0)
    assert first == {
        "startup": 4.0,
        "tracking": 0.5,
        "setup": 2.0,
        "train": 6.0,
        "loop": 1.0,
        "total": 13.5,
        "fixed": 7.5,
        "fixed_share": round(7.5 / 13.5, 4),
        "reused_process": False,
        "epochs": 2,
        "pid": 7,
    }
    again = trial_phases(trial("b", 7, 100.0, 120.0, [3.0]), pids, since=99.0)
    assert again["reused_process"] and again["startup"] == 0.0 and again["fixed"] == 3.5
    old = trial_phases(trial("c", 8, 50.0, 130.0, [2.0]), pids, since=99.0)  # a process from before the sweep
    assert old["reused_process"] and old["startup"] == 0.0
    summary = summarise_trials([first, again, old], wall=40.0, concurrency=1)
    assert summary["median"]["fixed"] == 3.5 and summary["processes"] == 2
    assert summary["trials_in_a_reused_process"] == 2 and summary["first_trial_startup"] == 4.0
    assert summary["trial_seconds_over_concurrency"] == round(13.5 + 6.5 + 5.5, 1)
    with pytest.raises(ValueError, match="no timing line"):
        trial_phases(tmp_path, pids, since=0.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "a"], "--epochs takes comma-separated integers, got 'a'"),
        (["--trials", "0", "--config", str(REPO / "configs" / "demo.yaml")], "--trials, --concurrency and every"),
        (["--config", "nope.yaml"], "config file not found"),
        (["--set", "trainer.epochs"], "--set expects key=value"),
    ],
)
def test_trial_cost_bad_input_is_one_line_before_any_trial(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code = cli_run(["bench", "trial-cost", "--storage", str(tmp_path / "runs"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()
