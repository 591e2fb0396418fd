"""`auxray bench sweep` at scale: the search-progress curve and the per-strategy summary over search seeds, the
page and plot made from its JSON, and bad input (one line, exit 2, before Ray starts and before any folder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from auxray.bench.sweep import best_so_far, summarise
from auxray.bench.sweep_page import plot_search_progress, render_sweep
from tests.conftest import REPO


def trial(epochs: int, val: float | None, ended: float, error: bool = False) -> dict[str, Any]:
    return {"params": {}, "epochs": epochs, "val_accuracy": val, "test_accuracy": val, "error": error, "ended": ended}


def test_pbt_exploits_are_counted_from_tunes_log(tmp_path: Path) -> None:
    from auxray.bench.sweep import pbt_exploits

    assert pbt_exploits(tmp_path) is None
    (tmp_path / "pbt_global.txt").write_text('["a", "b", 0, 1, {}]\n["c", "d", 1, 2, {}]\n')
    assert pbt_exploits(tmp_path) == 2


def test_best_so_far_follows_the_order_trials_ended_and_counts_only_complete_trials() -> None:
    trials = [
        trial(4, 0.30, ended=30.0),
        trial(1, 0.90, ended=10.0),  # stopped early: its compute counts, its score does not
        trial(4, 0.25, ended=20.0),
        trial(4, 0.95, ended=40.0, error=True),  # errored: not a result
        trial(4, 0.28, ended=50.0),
    ]
    assert best_so_far(trials, epochs=4) == [[5, 0.25], [9, 0.30], [13, 0.30], [17, 0.30]]


def run_record(strategy: str, seed: int, val: float, seconds: float) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "seed": seed,
        "best_val_accuracy": val,
        "best_test_accuracy": val - 0.01,
        "trials": 8,
        "trial_epochs": 20 if strategy == "tpe_asha" else 32,
        "seconds": seconds,
        "trials_per_hour": 3600 * 8 / seconds,
        "errored": 0,
        "driver": {"rss_mb": 900.0, "peak_rss_mb": 950.0 + seed},
        "store_mb": 3.5,
        "curve": [[4, val - 0.05], [12, val]],
        "exploits": 3 + seed if strategy == "pbt" else None,
    }


def test_summary_is_mean_and_spread_over_search_seeds() -> None:
    runs = [run_record("tpe_asha", s, v, 100.0) for s, v in ((0, 0.3), (1, 0.5))]
    runs += [run_record("pbt", 0, 0.4, 200.0)]
    summary = summarise(runs, ["tpe_asha", "pbt"])
    assert summary["tpe_asha"]["seeds"] == [0, 1]
    assert summary["tpe_asha"]["best_val_accuracy"] == {"mean": 0.4, "std": 0.1}
    assert summary["pbt"]["trial_epochs"] == {"mean": 32.0, "std": 0.0}
    assert summary["pbt"]["trials_per_hour"]["mean"] == pytest.approx(144.0)


def test_page_and_plot_come_from_the_json(tmp_path: Path) -> None:
    runs = [run_record(label, s, 0.3 + 0.05 * s, 100.0) for label in ("tpe_asha", "pbt") for s in (0, 1)]
    data = {
        "sweep": "scale",
        "trials": 8,
        "concurrency": 4,
        "cpus_per_trial": 0.5,
        "epochs_per_trial": 4,
        "space": ["method.task_weights.rotation"],
        "search_seeds": [0, 1],
        "runs": runs,
        "summary": summarise(runs, ["tpe_asha", "pbt"]),
    }
    page = render_sweep(data)
    assert "| tpe_asha | 0.325 ± 0.025 | 0.315 ± 0.025 | 20 ± 0 |" in page
    assert "| pbt |" in page and "budget 32 trial-epochs" in page
    assert "checkpoint 3, 4 times (per seed)" in page
    assert "4 sweeps, 32 trials in all" in page and "peak 951 MiB" in page and "3.5 MiB" in page
    png = plot_search_progress(data, tmp_path / "progress.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("sweep", "args", "message"),
    [
        ("sweeps/scale_weights.yaml", ["--strategies", "tpe_asha,bayes"], "unknown strategy 'bayes'; choose from"),
        ("sweep_demo.yaml", [], "strategy pbt cannot perturb trainer.lr (only method.*, outer.*, hypergrad.*)"),
        ("sweeps/scale_weights.yaml", ["--seeds", "0,x"], "--seeds expects comma-separated integers"),
        ("sweeps/scale_weights.yaml", ["--seeds", ","], "--seeds is empty"),
        ("sweeps/scale_weights.yaml", ["--trials", "0"], "--trials must be at least 1"),
        ("sweeps/scale_weights.yaml", ["--gpus-per-trial", "-1"], "--gpus-per-trial must be at least 0"),
        ("sweeps/missing.yaml", [], "missing.yaml"),
    ],
)
def test_bad_input_is_one_line_before_anything_starts(
    tmp_path: Path, sweep: str, args: list[str], message: str
) -> None:
    storage = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "auxray.cli", "bench", "sweep", f"configs/{sweep}", "--storage", str(storage), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert proc.stdout == "" and not storage.exists()
