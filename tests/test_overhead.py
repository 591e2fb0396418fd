"""`auxray bench overhead`: rows from run records, README rendering, bad input, and quick end-to-end runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from auxray.bench.cost_page import render_overhead
from auxray.bench.outer_breakdown import VARIANTS
from auxray.bench.overhead import (
    TWINS,
    build_rows,
    check_twins_match,
    parse_seeds,
    resolve_configs,
    run_order,
    run_overhead,
)
from auxray.bench.plan import CONFIG_DIR
from auxray.bench.report import update_page
from auxray.errors import UserError
from tests.conftest import CACHE_DIR, REPO

SETTINGS = {"method": "neumann", "every": 5, "steps": 3, "reuse_graph": True, "batch_size": None, "params": "all"}


def _run(method: str, seed: int, acc: float, train_seconds: float, steps: int, outer: int, epochs: int = 2) -> dict:
    return {
        "method": method,
        "seed": seed,
        "test_accuracy": acc,
        "train_seconds": train_seconds,
        "inner_steps": steps,
        "outer_steps": outer,
        "epochs": epochs,
        "settings": SETTINGS,
    }


RUNS = [
    _run("auxilearn_combine", 0, 0.61, 90.0, 60, 12),
    _run("auxilearn_combine", 1, 0.57, 120.0, 60, 12),
    _run("equal", 0, 0.60, 40.0, 60, 0),
    _run("equal", 1, 0.58, 44.0, 60, 0),
    _run("maxl", 0, 0.55, 70.0, 50, 10),
    _run("maxl_frozen", 0, 0.52, 30.0, 50, 0),
    _run("jtds", 0, 0.50, 99.0, 60, 12),  # its twin `equal` has runs: a row
    _run("auxilearn_labels", 0, 0.5, 80.0, 60, 12),  # its twin has no run: no row
]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def test_rows_from_run_records() -> None:
    rows = build_rows(RUNS, ["auxilearn_combine", "jtds", "maxl", "auxilearn_labels"])
    assert [(r["method"], r["twin"]) for r in rows] == [
        ("auxilearn_combine", "equal"),
        ("jtds", "equal"),
        ("maxl", "maxl_frozen"),
    ]
    by = {r["method"]: r for r in rows}
    for m, row in by.items():
        mine = [r for r in RUNS if r["method"] == m]
        theirs = [r for r in RUNS if r["method"] == row["twin"]]
        step = _mean([r["train_seconds"] / r["inner_steps"] for r in mine])
        twin_step = _mean([r["train_seconds"] / r["inner_steps"] for r in theirs])
        assert row["seconds_per_step"] == pytest.approx(step)
        assert row["twin_seconds_per_step"] == pytest.approx(twin_step)
        assert row["ratio"] == pytest.approx(step / twin_step)
        assert row["accuracy"] == pytest.approx(_mean([r["test_accuracy"] for r in mine]))
        assert row["twin_accuracy"] == pytest.approx(_mean([r["test_accuracy"] for r in theirs]))
        assert row["accuracies"] == [r["test_accuracy"] for r in mine]
        assert row["seconds_per_epoch"] == pytest.approx(_mean([r["train_seconds"] / r["epochs"] for r in mine]))
        assert row["outer_steps"] == [r["outer_steps"] for r in mine]
        assert row["seeds"] == [r["seed"] for r in mine]
    assert by["auxilearn_combine"]["ratio"] > 1 and by["auxilearn_combine"]["settings"] == SETTINGS


def test_twins_are_shared_and_frozen() -> None:
    assert run_order(["auxilearn_combine", "jtds", "maxl", "maxl_fo"]) == [
        "auxilearn_combine",
        "equal",
        "jtds",
        "maxl",
        "maxl_frozen",
        "maxl_fo",
    ]
    keys = run_order(list(TWINS))
    cfgs = resolve_configs(keys, [0], None, True, [], CONFIG_DIR)
    check_twins_match(list(TWINS), cfgs, 0)
    for m, twin in TWINS.items():
        assert cfgs[m, 0].hypergrad.enabled
        assert cfgs[twin.name, 0].hypergrad.enabled is (twin.name == "equal")
    assert cfgs["maxl_frozen", 0].method.name == "maxl" and cfgs["equal", 0].method.aux_task == "rotation"
    cfgs["equal", 0].trainer.lr = 0.5
    with pytest.raises(UserError, match="trainer.lr"):
        check_twins_match(["jtds"], cfgs, 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"methods": ["stl"]}, "unknown method"),
        ({"methods": []}, "unknown method"),
        ({"seeds": []}, "distinct seeds"),
        ({"seeds": [0, 0]}, "distinct seeds"),
        ({"jobs": 0}, "--jobs must be at least 1"),
    ],
)
def test_bad_input_is_a_user_error(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message):
        run_overhead(**{"quick": True, "out": tmp_path / "o.json", **kwargs})
    assert not any(tmp_path.iterdir())


def test_seeds_parsed() -> None:
    assert parse_seeds(None) is None and parse_seeds("3, 1") == (3, 1)
    with pytest.raises(UserError, match="comma-separated integers"):
        parse_seeds("0,x")


def test_cli_bad_method_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "auxray.cli",
            "bench",
            "overhead",
            "--methods",
            "maxl,nope",
            "--out",
            str(tmp_path / "o.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "unknown method(s) ['nope']" in proc.stderr
    assert not any(tmp_path.iterdir())


BREAKDOWN = {
    "machine": {"device": "cpu", "torch": "2.x", "torch_threads": 2},
    "warmup": 1,
    "repeats": 3,
    "quick": False,
    "methods": [
        {
            "method": "maxl",
            "variants": [
                {
                    "variant": name,
                    "overrides": list(o),
                    "settings": SETTINGS,
                    "plain_step_seconds": 0.25,
                    "phases": {
                        "inner_forward_backward": 0.2,
                        "outer_gradient": 0.1,
                        "graph_build": 0.05,
                        "hvp": 0.6,
                        "hvp_count": 3.0,
                        "mixed_term": 0.07,
                        "direct_term": 0.01,
                        "optimizer": 0.02,
                        "communication": 0.0,
                        "total": 1.0 + i,
                    },
                    "total_over_plain_step": (1.0 + i) / 0.25,
                    "cosine_to_full": 1.0 - i / 10,
                }
                for i, (name, o) in enumerate(VARIANTS.items())
            ],
        }
    ],
}


def test_render_overhead_rows_and_breakdown(tmp_path: Path) -> None:
    rows = build_rows(RUNS, ["auxilearn_combine", "maxl"])
    text = render_overhead(rows)
    for r in rows:
        line = next(x for x in text.splitlines() if x.startswith(f"| {r['method']} | {r['twin']} |"))
        assert f"{r['ratio']:.3g}" in line and f"{100 * r['accuracy']:.1f}" in line
        assert f"{100 * r['twin_accuracy']:.1f}" in line and "reuse_graph=true" in line
    assert "One outer step" not in text
    with_breakdown = render_overhead(rows, BREAKDOWN)
    assert with_breakdown.startswith(text) and "**maxl**" in with_breakdown
    for v in BREAKDOWN["methods"][0]["variants"]:
        assert (
            f"| {v['variant']} | 0.25 | {v['phases']['total']:.3g} | {v['total_over_plain_step']:.3g} |"
            in with_breakdown
        )

    # The README section: rendered between its markers from the JSON (and the breakdown beside it) ...
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench_overhead_cpu.json").write_text(json.dumps(rows))
    (results / "bench_overhead_cpu_breakdown.json").write_text(json.dumps(BREAKDOWN))
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- bench:overhead -->\nold\n<!-- /bench:overhead -->\nb\n")
    assert update_page(readme, results) == ["overhead"]
    assert readme.read_text() == f"a\n<!-- bench:overhead -->\n{with_breakdown}\n<!-- /bench:overhead -->\nb\n"
    # ... and nothing happens without a marker or without the JSON.
    readme.write_text("no marker\n")
    assert update_page(readme, results) == [] and readme.read_text() == "no marker\n"
    readme.write_text("a\n<!-- bench:overhead -->\nold\n<!-- /bench:overhead -->\n")
    assert update_page(readme, tmp_path / "empty") == [] and "old" in readme.read_text()


# A narrow net on one CPU thread: the tests check the bench's rows, reuse and breakdown, not its timings.
SMALL = ("--set", "model.width=8", "--set", "trainer.threads=1", "--set", "trainer.device=cpu")


def _overhead(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "auxray.cli",
        "bench",
        "overhead",
        "--quick",
        "--out",
        str(out / "ov.json"),
        "--runs-dir",
        str(out / "runs"),
        "--set",
        f"data.cache_dir={CACHE_DIR}",
        *SMALL,
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_quick_overhead_breakdown_rows_and_reuse(cifar_zip: Path, tmp_path: Path) -> None:
    """One method and its twin with the per-phase breakdown; then a second invocation that adds a method reuses
    both runs, trains only the new method and its twin, and leaves the breakdown as it was."""
    # A narrow net, one Neumann term and one thread: minutes, even on a busy 2-core machine.
    first = _overhead(tmp_path, "--methods", "auxilearn_combine", "--set", "hypergrad.steps=1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 runs as the grid sweep" in first.stderr and "1 at once" in first.stderr
    breakdown = (tmp_path / "ov_breakdown.json").read_text()
    data = json.loads(breakdown)
    assert [m["method"] for m in data["methods"]] == ["auxilearn_combine"]
    variants = {v["variant"]: v for v in data["methods"][0]["variants"]}
    assert list(variants) == list(VARIANTS)
    full = variants["full (recompute, all params)"]
    assert (full["settings"]["reuse_graph"], full["settings"]["params"], full["settings"]["batch_size"]) == (
        False,
        "all",
        None,
    )
    assert variants["last_block"]["settings"]["params"] == "last_block"
    assert variants["batch_size=32"]["settings"]["batch_size"] == 32
    # The cosine compares each variant's hypergradient with the one over every parameter and the whole batches at
    # the same W and batches: 1 where the variant takes those, below 1 where it cheapens them, and the same for
    # the shipped config as for the variant with its settings (both trainers start from the same seed).
    for name in ("full (recompute, all params)", "reuse_graph"):
        assert variants[name]["cosine_to_full"] == pytest.approx(1.0, abs=1e-5), name
    for name in ("last_block", "batch_size=32"):
        assert variants[name]["cosine_to_full"] < 1 - 1e-3, name
    assert variants["shipped"]["settings"] == variants["last_block"]["settings"]
    assert variants["shipped"]["cosine_to_full"] == pytest.approx(variants["last_block"]["cosine_to_full"], abs=1e-6)
    for v in variants.values():
        ph = v["phases"]
        assert ph["hvp_count"] == v["settings"]["steps"] and ph["total"] > 0 and v["plain_step_seconds"] > 0
        assert v["total_over_plain_step"] == pytest.approx(ph["total"] / v["plain_step_seconds"])
        assert all(0 <= ph[k] <= ph["total"] for k in ph if k not in ("hvp_count", "total"))

    second = _overhead(tmp_path, "--methods", "auxilearn_combine,maxl", "--set", "hypergrad.steps=1", "--no-breakdown")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("(skipped)") == 2 and "2 runs as the grid sweep" in second.stderr, second.stderr
    rows = json.loads((tmp_path / "ov.json").read_text())
    assert rows == json.loads(second.stdout.strip().splitlines()[-1])
    assert [(r["method"], r["twin"]) for r in rows] == [("auxilearn_combine", "equal"), ("maxl", "maxl_frozen")]
    runs = [json.loads(x) for x in (tmp_path / "ov.runs.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in runs) == ["auxilearn_combine", "equal", "maxl", "maxl_frozen"]
    by = {r["method"]: r for r in runs}
    for row in rows:
        mine, twin = by[row["method"]], by[row["twin"]]
        assert row["ratio"] > 0 and row["ratio"] == pytest.approx(
            (mine["train_seconds"] / mine["inner_steps"]) / (twin["train_seconds"] / twin["inner_steps"])
        )
        assert row["accuracy"] == mine["test_accuracy"] and row["twin_accuracy"] == twin["test_accuracy"]
        assert mine["outer_steps"] > 0 and twin["outer_steps"] == 0 and row["outer_steps"] == [mine["outer_steps"]]
        assert mine["inner_steps"] == twin["inner_steps"] > 0
    assert (tmp_path / "ov_breakdown.json").read_text() == breakdown
