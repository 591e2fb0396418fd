"""The paper-table reproduction (jobs/reproduce.py) in quick mode: tables written, finished runs reused."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auxray.bench.store import append_run, read_runs
from auxray.bench.table import build_table
from tests.conftest import CACHE_DIR, REPO

METHODS = ["stl", "auxilearn_combine", "maxl"]
# A narrow net on one CPU thread: the tests check the runner and its tables, not the accuracies (2.5x faster).
SMALL = ("--width", "8", "--set", "trainer.threads=1", "--set", "trainer.device=cpu")


def _reproduce(out_dir: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "jobs/reproduce.py", "--quick", "--methods", ",".join(METHODS),
           "--out-dir", str(out_dir), "--runs-dir", str(out_dir / "runs"),
           "--set", f"data.cache_dir={CACHE_DIR}", *SMALL, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    return proc, time.perf_counter() - t0


@pytest.mark.slow
def test_quick_reproduce_writes_tables_and_resumes(cifar_zip: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    first, first_seconds = _reproduce(out)
    assert first.returncode == 0, first.stderr[-3000:]
    stdout_table = json.loads(first.stdout.strip().splitlines()[-1])

    table_file = out / "reproduce_quick_convnet4.json"
    md_file = out / "reproduce_quick_convnet4.md"
    runs_file = out / "reproduce_quick_convnet4.runs.jsonl"
    table = json.loads(table_file.read_text())
    assert table == stdout_table
    assert [row["method"] for row in table] == METHODS
    runs = [json.loads(line) for line in runs_file.read_text().splitlines() if line.strip()]
    by_method = {r["method"]: r for r in runs}
    for row in table:  # each row is its runs' record: the accuracy and wall time they wrote down
        run = by_method[row["method"]]
        assert row["accuracies"] == [run["test_accuracy"]] == [row["mean"]] and row["std"] == 0.0
        assert row["seconds"] == run["seconds"] and 0 < run["seconds"] < first_seconds
    rows = {row["method"]: row for row in table}
    assert rows["stl"]["relative_time"] == pytest.approx(1.0)
    assert rows["maxl"]["settings"]["entropy_weight"] == 0.2
    assert rows["maxl"]["settings"]["focal_gamma"] == 2.0
    assert rows["maxl"]["settings"]["hypergrad.method"] == "unroll"

    md = md_file.read_text()
    for paper in ("STL 50.8 ± 0.8", "MAXL 58.2 ± 0.3", "MAXL-F 56.1 ± 0.1", "AuxiLearn 60.7 ± 1.3"):
        assert paper in md
    assert "| stl (STL) | 50.8 ± 0.8 |" in md and "| maxl (MAXL) | 58.2 ± 0.3 |" in md
    assert "| auxilearn_combine | – |" in md
    assert "python jobs/reproduce.py --quick" in md
    assert "torch" in md and "convnet4" in md and "test 1,000 images" in md

    assert sorted(r["method"] for r in runs) == sorted(METHODS)
    assert {"method", "seed", "test_accuracy", "seconds", "best_val_accuracy", "epochs"} <= set(runs[0])

    # Running it again reuses every finished run: nothing trains, same numbers, faster.
    second, second_seconds = _reproduce(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("(skipped)") == len(METHODS), second.stderr
    assert "ETA" not in second.stderr
    again = json.loads(table_file.read_text())
    for a, b in zip(table, again):
        assert a["method"] == b["method"] and a["accuracies"] == b["accuracies"] and a["seconds"] == b["seconds"]
    assert len(runs_file.read_text().splitlines()) == len(METHODS)
    assert second_seconds < first_seconds


@pytest.mark.slow
def test_parallel_jobs_record_every_run(cifar_zip: Path, tmp_path: Path) -> None:
    """--jobs 2 trains two runs at a time in their own processes; every run lands in the progress file once."""
    out = tmp_path / "results"
    cmd = [sys.executable, "jobs/reproduce.py", "--quick", "--methods", "stl,gcs", "--seeds", "0,1", "--jobs", "2",
           "--out-dir", str(out), "--runs-dir", str(out / "runs"), "--set", f"data.cache_dir={CACHE_DIR}", *SMALL]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(line) for line in (out / "reproduce_quick_convnet4.runs.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["seed"]) for r in runs) == [("gcs", 0), ("gcs", 1), ("stl", 0), ("stl", 1)]
    assert all(r["jobs"] == 2 and r["threads"] >= 1 for r in runs)
    table = json.loads((out / "reproduce_quick_convnet4.json").read_text())
    assert [(row["method"], row["seeds"]) for row in table] == [("stl", [0, 1]), ("gcs", [0, 1])]
    md = (out / "reproduce_quick_convnet4.md").read_text()
    assert "--jobs 2" in md and "2 at a time" in md


def test_bad_jobs_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "jobs/reproduce.py", "--quick", "--jobs", "0", "--out-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["reproduce: error: --jobs must be at least 1, got 0"], proc.stderr
    assert not any(tmp_path.iterdir())


def test_table_statistics_and_torn_progress_file(tmp_path: Path) -> None:
    """Fast: mean/std (ddof=0) over seeds, time relative to STL, and a killed job's torn last line ignored."""
    runs_file = tmp_path / "r.runs.jsonl"
    for method, seed, acc, sec in [("stl", 0, 0.5, 10.0), ("stl", 1, 0.6, 12.0), ("maxl", 0, 0.55, 33.0)]:
        append_run(runs_file, {"method": method, "seed": seed, "test_accuracy": acc, "seconds": sec})
    with open(runs_file, "a") as f:
        f.write('{"method": "maxl", "seed": 1, "test_acc')  # interrupted mid-write
    runs = read_runs(runs_file)
    assert len(runs) == 3
    table = build_table(runs, ["stl", "maxl", "jtds"])
    assert [r["method"] for r in table] == ["stl", "maxl"]
    stl, maxl = table
    assert stl["mean"] == pytest.approx(0.55) and stl["std"] == pytest.approx(0.05) and stl["std_ddof"] == 0
    assert stl["relative_time"] == pytest.approx(1.0) and maxl["relative_time"] == pytest.approx(3.0)
    assert maxl["std"] == 0.0 and maxl["paper"] == {"mean": pytest.approx(0.582), "std": pytest.approx(0.003)}
