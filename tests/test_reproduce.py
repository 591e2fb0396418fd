"""The paper-table reproduction (jobs/reproduce.py) as Tune grid sweeps: tables written; finished runs reused by a
re-run, an interrupted invocation resumed, a later one with more seeds adding only those, a changed setting
re-run; the merge of several invocations' trials (fast, from files); bad input one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auxray.bench.table import build_table
from auxray.bench.table_runs import (
    GridSetup,
    Wanted,
    finished_rows,
    plan_sweeps,
    read_runs_file,
    write_manifest,
    write_runs_file,
)
from auxray.tune.record import RECORD_FILE
from tests.conftest import CACHE_DIR, REPO

# A narrow net on one CPU thread: the tests check the runner and its tables, not the accuracies (2.5x faster).
SMALL = ("--width", "8", "--set", "trainer.threads=1", "--set", "trainer.device=cpu")


def test_bad_jobs_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "jobs/reproduce.py", "--quick", "--jobs", "0", "--out-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["reproduce: error: --jobs must be at least 1, got 0"], proc.stderr
    assert not any(tmp_path.iterdir())


def test_table_statistics_and_torn_record_file(tmp_path: Path) -> None:
    """Fast: mean/std (ddof=0) over seeds of the best-on-validation and the last epoch's test accuracies, time
    relative to STL, and a torn last line of a run record ignored."""
    runs_file = tmp_path / "r.runs.jsonl"
    rows = {
        (m, s, "fp"): {
            "method": m,
            "seed": s,
            "test_accuracy": acc,
            "final_test_accuracy": final,
            "seconds": sec,
            "finished_at": str(s),
            "fingerprint": "fp",
        }
        for m, s, acc, final, sec in [
            ("stl", 0, 0.5, 0.7, 10.0),
            ("stl", 1, 0.6, 0.6, 12.0),
            ("maxl", 0, 0.55, 0.4, 33.0),
        ]
    }
    write_runs_file(runs_file, rows)
    with open(runs_file, "a") as f:
        f.write('{"method": "maxl", "seed": 1, "test_acc')  # a hand-edited or copied file cut short
    runs = list(read_runs_file(runs_file).values())
    assert len(runs) == 3
    table = build_table(runs, ["stl", "maxl", "jtds"])
    assert [r["method"] for r in table] == ["stl", "maxl"]
    stl, maxl = table
    assert stl["mean"] == pytest.approx(0.55) and stl["std"] == pytest.approx(0.05) and stl["std_ddof"] == 0
    assert stl["final_mean"] == pytest.approx(0.65) and stl["final_std"] == pytest.approx(0.05)
    assert stl["final_accuracies"] == [0.7, 0.6] and maxl["final_mean"] == 0.4 and maxl["final_std"] == 0.0
    assert stl["relative_time"] == pytest.approx(1.0) and maxl["relative_time"] == pytest.approx(3.0)
    assert maxl["std"] == 0.0 and maxl["paper"] == {"mean": pytest.approx(0.582), "std": pytest.approx(0.003)}


def _setup(tmp_path: Path) -> GridSetup:
    return GridSetup(
        tag="t",
        runs_root=tmp_path / "runs",
        config_dir=REPO / "configs" / "cifar10_5pct",
        overrides={"trainer.epochs": 1},
        jobs=2,
        cpus_per_trial=1.0,
        tracking_uri="sqlite:///x.db",
        experiment="reproduce-t",
    )


def _wanted(method: str, seed: int, fp: str = "fp0") -> Wanted:
    return Wanted(method, seed, fp, "convnet4", {"aux_lr": 0.01})


def _finish(sweep, trial: str, method: str, seed: int, acc: float, at: str) -> None:
    """A finished trial's files as a grid trial writes them."""
    trial_dir = sweep.trial_files_dir(trial)
    trial_dir.mkdir(parents=True)
    summary = {"test_accuracy": acc, "seconds": 2.0, "best_val_accuracy": 0.3, "epochs": 1, "best_epoch": 1}
    record = {
        "params": {"config": f"{method}.yaml", "seed": seed},
        "summary": summary,
        "diagnostics": {},
        "resumed_from_epoch": None,
        "finished_at": at,
    }
    (trial_dir / RECORD_FILE).write_text(json.dumps(record))


def test_missing_runs_become_grid_sweeps_and_trials_merge_by_fingerprint(tmp_path: Path) -> None:
    """Fast, from files: pending runs group into grids of methods missing the same seeds, named by their runs;
    finished trials of several experiments merge into rows keyed on (method, seed, fingerprint), so a trial of
    another fingerprint (changed settings) does not count as the wanted run."""
    setup = _setup(tmp_path)
    first = plan_sweeps(setup, [_wanted("stl", 0), _wanted("maxl", 0)])
    assert len(first) == 1
    sweep, runs = first[0]
    assert sweep.grid == {"config": ["stl.yaml", "maxl.yaml"], "seed": [0]} and sweep.trials == 2
    assert sweep.concurrency == 2 and sweep.scheduler.type == "none" and sweep.overrides == {"trainer.epochs": 1}
    assert plan_sweeps(setup, [_wanted("maxl", 0), _wanted("stl", 0)])[0][0].name == sweep.name
    assert plan_sweeps(setup, [_wanted("stl", 0, "fp1"), _wanted("maxl", 0)])[0][0].name != sweep.name
    write_manifest(sweep, runs, threads=1)
    _finish(sweep, "a", "stl", 0, 0.5, "2026-01-01T00:00:00")
    _finish(sweep, "b", "maxl", 0, 0.6, "2026-01-01T00:00:01")

    # A later invocation: one more seed for both, and jtds for seeds 0 and 1: two grids, by seed set.
    later = plan_sweeps(setup, [_wanted("stl", 1), _wanted("maxl", 1), _wanted("jtds", 0), _wanted("jtds", 1)])
    grids = sorted((s.grid["config"], s.grid["seed"]) for s, _ in later)
    assert grids == [(["jtds.yaml"], [0, 1]), (["stl.yaml", "maxl.yaml"], [1])]
    more, runs2 = next((s, r) for s, r in later if s.grid["seed"] == [1])
    write_manifest(more, runs2, threads=1, command="python jobs/reproduce.py --seeds 1")
    _finish(more, "c", "stl", 1, 0.7, "2026-01-01T00:00:02")  # maxl seed 1 unfinished (interrupted)
    # A run of stl seed 0 under changed settings: another fingerprint, another row.
    changed, runs3 = plan_sweeps(setup, [_wanted("stl", 0, "fp1")])[0]
    write_manifest(changed, runs3, threads=1)
    _finish(changed, "d", "stl", 0, 0.9, "2026-01-01T00:00:03")

    rows = finished_rows(setup.runs_root)
    assert sorted(rows) == [("maxl", 0, "fp0"), ("stl", 0, "fp0"), ("stl", 0, "fp1"), ("stl", 1, "fp0")]
    assert rows["stl", 0, "fp0"]["test_accuracy"] == 0.5 and rows["stl", 0, "fp1"]["test_accuracy"] == 0.9
    row = rows["stl", 1, "fp0"]
    assert row["run_dir"] == str(more.trial_files_dir("c")) and row["jobs"] == 2 and row["threads"] == 1
    assert row["settings"] == {"aux_lr": 0.01} and row["backbone"] == "convnet4" and row["seconds"] == 2.0
    # Each run keeps the command that started its experiment (none was given to the first one).
    assert row["command"] == "python jobs/reproduce.py --seeds 1" and rows["stl", 0, "fp0"]["command"] is None

    runs_file = tmp_path / "out" / "r.runs.jsonl"
    write_runs_file(runs_file, rows)
    assert read_runs_file(runs_file) == rows


def test_bad_override_is_one_line(tmp_path: Path) -> None:
    for bad, message in [("trainer.lrr=0.1", "trainer.lrr"), ("trainer.lr", "--set expects key=value")]:
        proc = subprocess.run(
            [
                sys.executable,
                "jobs/reproduce.py",
                "--quick",
                "--set",
                bad,
                "--out-dir",
                str(tmp_path),
                "--runs-dir",
                str(tmp_path / "runs"),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
        assert not any(tmp_path.iterdir())


def _trained_again(runs_root: Path, trials: set[str]) -> list[str]:
    """Those of the finished `trials` that started again below their last epoch (a restart at the last epoch only
    reports the finished result again, as a trial Tune had not yet marked terminated does)."""
    again = []
    for trial in trials:
        starts = [json.loads(line)["start_epoch"] for line in (Path(trial) / "attempts.jsonl").read_text().splitlines()]
        if starts[0] != 0 or any(s < 1 for s in starts[1:]):
            again.append(f"{trial}: {starts}")
    return again


def _saved_after_a_finished_trial(runs_root: Path) -> bool:
    """A trial of an experiment wrote its record and Tune saved the experiment's state since (its periodic
    save): only then can a killed driver's experiment be restored (before it, the table starts a new one)."""
    for record in runs_root.glob(f"*/trials/*/{RECORD_FILE}"):
        experiment = record.parents[2]
        saved = [p.stat().st_mtime for p in experiment.glob("experiment_state-*.json")]
        if saved and max(saved) > record.stat().st_mtime:
            return True
    return False


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_interrupted_table_resumes_and_later_seeds_extend_it(cifar_zip: Path, tmp_path: Path) -> None:
    """Kill the driver once a trial finished and Tune saved the experiment: the same command resumes that
    experiment without training the finished trial again and writes the table (JSON, runs file, Markdown beside
    the paper's numbers); then --seeds 0,1 --jobs 2 trains only seed 1, two at a time; the same command again
    trains nothing; then --epochs 2 (a changed setting) trains again."""
    out = tmp_path / "results"
    base = [
        sys.executable,
        "jobs/reproduce.py",
        "--quick",
        "--methods",
        "stl,gcs,maxl",
        "--out-dir",
        str(out),
        "--runs-dir",
        str(out / "runs"),
        "--set",
        f"data.cache_dir={CACHE_DIR}",
        *SMALL,
    ]
    driver = subprocess.Popen(
        base, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and driver.poll() is None and not _saved_after_a_finished_trial(out / "runs"):
            time.sleep(0.2)
        assert driver.poll() is None, "the driver ended before it could be interrupted"
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    finished = {str(p.parent) for p in (out / "runs").glob(f"*/trials/*/{RECORD_FILE}")}
    assert 1 <= len(finished) < 3
    experiments = sorted(p.name for p in (out / "runs").glob("*.table.json"))

    resumed = subprocess.run(base, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the interrupted experiment" in resumed.stderr
    assert sorted(p.name for p in (out / "runs").glob("*.table.json")) == experiments  # no new experiment
    assert not _trained_again(out / "runs", finished)
    table_file, runs_file = out / "reproduce_quick_convnet4.json", out / "reproduce_quick_convnet4.runs.jsonl"
    table = json.loads(table_file.read_text())
    assert table == json.loads(resumed.stdout.strip().splitlines()[-1])
    assert [(row["method"], row["seeds"]) for row in table] == [("stl", [0]), ("gcs", [0]), ("maxl", [0])]
    by_method = {r["method"]: r for r in map(json.loads, runs_file.read_text().splitlines())}
    for row in table:  # each row is its runs' record: the accuracy and wall time they wrote down
        run = by_method[row["method"]]
        assert row["accuracies"] == [run["test_accuracy"]] == [row["mean"]] and row["std"] == 0.0
        assert row["seconds"] == run["seconds"] > 0
        assert {"seed", "best_val_accuracy", "epochs"} <= set(run)
    rows = {row["method"]: row for row in table}
    assert rows["stl"]["relative_time"] == pytest.approx(1.0)
    assert (rows["maxl"]["settings"]["entropy_weight"], rows["maxl"]["settings"]["focal_gamma"]) == (0.2, 2.0)
    assert rows["maxl"]["settings"]["hypergrad.method"] == "unroll"
    md = (out / "reproduce_quick_convnet4.md").read_text()
    for paper in ("STL 50.8 ± 0.8", "MAXL 58.2 ± 0.3", "MAXL-F 56.1 ± 0.1", "AuxiLearn 60.7 ± 1.3"):
        assert paper in md
    assert "| stl (STL) | 50.8 ± 0.8 |" in md and "| maxl (MAXL) | 58.2 ± 0.3 |" in md and "| gcs | – |" in md
    assert "python jobs/reproduce.py --quick" in md
    assert "torch" in md and "convnet4" in md and "test 1,000 images" in md

    # More seeds, two trials at a time (each its own process): only the new seed's runs train.
    extend = [*base, "--seeds", "0,1", "--jobs", "2"]
    extended = subprocess.run(extend, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert extended.stderr.count("(skipped)") == 3 and "3 runs as the grid sweep" in extended.stderr
    assert "2 at once" in extended.stderr
    trials = {str(p.parent) for p in (out / "runs").glob(f"*/trials/*/{RECORD_FILE}")}
    assert len(trials) == 6 and not _trained_again(out / "runs", trials)
    table = json.loads(table_file.read_text())
    assert [(row["method"], row["seeds"]) for row in table] == [("stl", [0, 1]), ("gcs", [0, 1]), ("maxl", [0, 1])]
    runs = [json.loads(line) for line in runs_file.read_text().splitlines()]
    assert len(runs) == 6
    assert all(r["jobs"] == 2 and r["threads"] >= 1 for r in runs if r["seed"] == 1)
    md = (out / "reproduce_quick_convnet4.md").read_text()
    assert "--jobs 2" in md and "2 at a time" in md

    # The same command again finds every run finished: no sweep starts, the table stays as it was.
    again = subprocess.run(extend, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("(skipped)") == 6 and "grid sweep" not in again.stderr, again.stderr
    assert json.loads(table_file.read_text()) == table and len(runs_file.read_text().splitlines()) == 6

    changed = subprocess.run(
        [*base, "--methods", "stl", "--epochs", "2"], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "(skipped)" not in changed.stderr and "1 runs as the grid sweep" in changed.stderr
    table = json.loads((out / "reproduce_quick_convnet4.json").read_text())
    assert [row["method"] for row in table] == ["stl"]  # the others ran 1 epoch: not comparable, not carried
    runs = [json.loads(line) for line in (out / "reproduce_quick_convnet4.runs.jsonl").read_text().splitlines()]
    assert sorted(r["epochs"] for r in runs if r["method"] == "stl") == [1, 1, 2]


@pytest.mark.parametrize(
    ("config", "override"), [("autolambda", "outer.lower_bound=0"), ("forkmerge", "method.prune_steps=9")]
)
def test_a_key_added_later_leaves_the_fingerprint_alone_at_its_default(config: str, override: str) -> None:
    """A recorded run stays the wanted run when a config key is added (ADDED_KEYS) and left at its default: the hash
    is the one of the dump without that key; set to anything else, it is another run."""
    import hashlib

    from auxray.bench.plan import ADDED_KEYS, fingerprint
    from auxray.config import load_config

    path = REPO / "configs" / "cifar10_5pct_semisup_noise" / f"{config}.yaml"
    cfg = load_config(path, [])
    d = cfg.model_dump()
    d["trainer"].pop("checkpoint_dir", None)
    d.pop("tracking", None)
    for section, key in ADDED_KEYS:
        d[section].pop(key, None)  # the dump before the key existed (a key of another method's is not there)
    before = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert fingerprint(cfg) == before
    assert fingerprint(load_config(path, [override])) != before


def test_the_committed_forkmerge_runs_are_still_the_wanted_runs() -> None:
    """The harmful set's recorded ForkMerge runs (trained before method.prune_steps existed) keep their fingerprint
    under today's config: a new key at its default retrains nothing."""
    from auxray.bench.plan import fingerprint
    from auxray.config import load_config

    runs = REPO / "benchmarks" / "results" / "weighting_cifar10_5pct_semisup.harmful.runs.jsonl"
    recorded = [r for r in map(json.loads, runs.read_text().splitlines()) if r["method"] == "forkmerge"]
    assert recorded
    path = REPO / "configs" / "cifar10_5pct_semisup_noise" / "forkmerge.yaml"
    for run in recorded:
        cfg = load_config(path, [f"trainer.seed={run['seed']}", f"data.seed={run['seed']}"])
        assert fingerprint(cfg) == run["fingerprint"], run["seed"]
