"""`auxray bench sweep-faults`: bad input is one line before anything starts; the check of MLflow's runs against
Tune's trials counts duplicates, runs left RUNNING and lost runs; and (slow) a tiny sweep survives its MLflow server
being killed with no run lost or duplicated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import auxray.bench.mlflow_server as mlflow_server
from auxray.bench.fault_check import ChildRun, ParentRun, TrialOutcome, check_sweep
from auxray.bench.sweep_faults import plan_faults, run_sweep_faults, scenario_sweep
from auxray.cli import run as cli_run
from auxray.tune.config import load_sweep
from tests.test_sweep import write_sweep

EPOCHS = 2


def full(run_id: str, trial: str, best: float, status: str = "FINISHED", **kw: object) -> ChildRun:
    """A child run of a trial that ran every epoch, with all its metrics."""
    fields = {"val_steps": (1, 2), "best_val": best, "test_accuracy": 0.5, **kw}
    return ChildRun(run_id=run_id, trial_id=trial, status=status, **fields)  # type: ignore[arg-type]


def test_bad_input_is_one_line_and_starts_nothing(
    tmp_path: Path, cifar_zip: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []
    monkeypatch.setattr(mlflow_server, "start_server", lambda *a: started.append(a))
    sweep = write_sweep(tmp_path, cifar_zip)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "grid", "base": "base.yaml", "search": "grid", "grid": {"seed": [0, 1]}}))
    storage = tmp_path / "bench"
    cases = {
        (str(tmp_path / "nope.yaml"),): "sweep file not found",
        (str(sweep), "--scenarios", "clean,bogus"): "unknown scenario bogus",
        (str(sweep), "--trials", "0"): "--trials must be at least 1",
        (str(sweep), "--outage", "-1"): "--outage must be at least 0",
        (str(grid), "--trials", "3"): "--trials does not apply to a grid sweep",
    }
    for args, message in cases.items():
        capsys.readouterr()
        code = cli_run(["bench", "sweep-faults", *args, "--storage", str(storage)])
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, lines)
        assert captured.out == ""
    assert not storage.exists() and not started


def test_scenario_sweep_is_the_same_run_in_its_own_folder(tmp_path: Path, cifar_zip: Path) -> None:
    """The scenario's copy of a sweep trains the same trials, with the plan's trial count and its own storage."""
    (tmp_path / "sub").mkdir()
    plan = plan_faults(write_sweep(tmp_path, cifar_zip, trials=4), trials=3, storage=tmp_path / "bench")
    copy = load_sweep(scenario_sweep(plan, tmp_path / "sub"))
    assert (copy.name, copy.trials, copy.storage_path) == ("tiny", 3, tmp_path / "sub" / "tune")
    params = {"outer.lr": 0.001, "hypergrad.steps": 2, "method.combiner": "linear"}
    assert copy.trial_config(params) == plan.sweep.trial_config(params)
    assert plan.scenarios == ("clean", "driver_killed", "server_killed") and not plan.root.exists()


def test_check_counts_duplicates_runs_left_running_and_lost_runs() -> None:
    trials = [
        TrialOutcome("a", EPOCHS),
        TrialOutcome("b", EPOCHS),
        TrialOutcome("c", 1),  # stopped early: no test accuracy expected
        TrialOutcome("d", EPOCHS),
        TrialOutcome("e", EPOCHS),
        TrialOutcome("f", 0, error=True),
    ]
    children = [
        full("r1", "a", 0.6),
        full("r2", "b", 0.7),
        full("r2bis", "b", 0.7),  # a second run of trial b
        ChildRun("r3", "c", "FINISHED", val_steps=(1,), best_val=0.3),
        full("r4", "d", 0.5, status="RUNNING"),  # left RUNNING: d has no finished run
        full("r5", "e", 0.65, test_accuracy=None),  # finished without its test accuracy
        ChildRun("r6", "f", "FAILED"),
        ChildRun("r7", "zz", "FAILED", orphaned=True),  # a trial the resumed sweep replaced
    ]
    parent = ParentRun("p", "FINISHED", best_val_accuracy=0.7, best_trial="b")
    check = check_sweep([parent], children, trials, EPOCHS)
    assert (check.child_runs, check.finished, check.running_left) == (8, 5, 1)
    assert check.statuses == {"FAILED": 2, "FINISHED": 5, "RUNNING": 1}
    assert (check.duplicated, check.missing_metrics, check.runs_lost, check.orphaned) == (1, 1, 2, 1)
    assert check.parent_summary_ok
    assert any("trial b has 2 child runs" in p for p in check.problems)


def test_check_of_a_clean_sweep_and_of_a_wrong_parent() -> None:
    trials = [TrialOutcome("a", EPOCHS), TrialOutcome("b", EPOCHS), TrialOutcome("c", 1)]
    children = [full("r1", "a", 0.6), full("r2", "b", 0.7), ChildRun("r3", "c", "FINISHED", val_steps=(1,))]
    right = ParentRun("p", "FINISHED", best_val_accuracy=0.7, best_trial="b")
    clean = check_sweep([right], children, trials, EPOCHS)
    assert (clean.duplicated, clean.running_left, clean.missing_metrics, clean.runs_lost) == (0, 0, 0, 0)
    assert clean.parent_summary_ok and clean.problems == []
    # A val_accuracy epoch missing from a finished run is missing metrics and a lost run.
    gap = check_sweep([right], [full("r1", "a", 0.6, val_steps=(2,)), *children[1:]], trials, EPOCHS)
    assert (gap.missing_metrics, gap.runs_lost) == (1, 1)
    wrong = {
        "another best": ParentRun("p", "FINISHED", best_val_accuracy=0.6, best_trial="a"),
        "a trial not the best": ParentRun("p", "FINISHED", best_val_accuracy=0.7, best_trial="a"),
        "still running": ParentRun("p", "RUNNING", best_val_accuracy=0.7, best_trial="b"),
    }
    for why, parent in wrong.items():
        assert not check_sweep([parent], children, trials, EPOCHS).parent_summary_ok, why
    assert not check_sweep([right, right], children, trials, EPOCHS).parent_summary_ok


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_server_killed_mid_sweep_loses_and_duplicates_nothing(tmp_path: Path, cifar_zip: Path) -> None:
    """The bench's server_killed scenario on a tiny sweep (its driver_killed one is what
    tests/test_sweep.py::test_kill_driver_then_resume checks, so the suite runs that once)."""
    path = write_sweep(tmp_path, cifar_zip, name="faults", trials=6, concurrency=2)
    plan = plan_faults(path, scenarios="server_killed", storage=tmp_path / "bench", outage=8)
    result = run_sweep_faults(plan)
    (row,) = result["scenarios"]
    assert row["scenario"] == "server_killed" and row["faults_injected"] == 1, row["faults"]
    assert row["trials"] == 6 and row["errored"] == 0 and row["completed"] + row["stopped_early"] == 6, row
    assert (row["runs_lost"], row["duplicated"], row["running_left"], row["missing_metrics"]) == (0, 0, 0, 0), row
    assert row["parent_summary_ok"], row["problems"]
    assert row["finished"] == 6 and row["child_runs"] == 6, row
    assert result["all_ok"]


def test_the_fault_table_is_rendered_from_its_json(tmp_path: Path) -> None:
    from auxray.bench.report import RENDERERS, render_section

    assert render_section("sweep_faults", tmp_path) is None
    row = {
        "scenario": "server_killed",
        "trials": 8,
        "faults_injected": 1,
        "completed": 6,
        "stopped_early": 2,
        "errored": 0,
        "child_runs": 8,
        "finished": 8,
        "running_left": 0,
        "duplicated": 0,
        "missing_metrics": 0,
        "runs_lost": 0,
        "parent_summary_ok": True,
        "seconds": 101.5,
        "faults": ["server SIGKILLed at 2/8"],
    }
    data = {
        "sweep_name": "s",
        "trials": 8,
        "epochs": 4,
        "concurrency": 4,
        "search": "tpe",
        "scheduler": "asha",
        "kill_driver_at": 1 / 3,
        "kill_server_at": 0.25,
        "outage_seconds": 30.0,
        "scenarios": [row],
    }
    (tmp_path / RENDERERS["sweep_faults"][0]).write_text(json.dumps(data))
    text = render_section("sweep_faults", tmp_path)
    assert text is not None and "kept down 30 s" in text and "once 25% finished" in text
    assert "| server_killed | 8 | 1 | 6 | 2 | 0 | 8 | 8 | 0 | 0 | 0 | 0 | yes | 102 |" in text
    assert text.endswith("- server_killed: server SIGKILLed at 2/8")
