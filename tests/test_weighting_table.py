"""The weighting table (auxray bench weighting), fast and from files: twins derived from the specs (a frozen copy
or another method's config, a shared twin once), rows per aux-task set with their compute and final weights, the
harmful set's equal_helpful_subset from the helpful set's equal runs, the weight_search row from a finished sweep's
Tune folder, the complete/incomplete report, and bad input one line with exit 2 through the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from auxray.bench.overhead import TWINS
from auxray.bench.plan import Plan
from auxray.bench.table_runs import MANIFEST_SUFFIX, write_runs_file
from auxray.bench.twins import FROZEN, Twin, fixed_twin, write_run_configs
from auxray.bench.weighting import _wanted, run_weighting
from auxray.bench.weighting_rows import completeness, final_weights
from auxray.bench.weighting_search import SearchResult, read_search
from auxray.bench.weighting_sets import AUX_SETS, SEARCH_ROW, set_plan
from auxray.cli import run as cli_run
from auxray.errors import UserError
from auxray.method_specs import EQUAL_WEIGHTS, SPECS


def test_twins_come_from_the_specs_and_a_shared_twin_is_one_key(tmp_path: Path) -> None:
    plan = set_plan("helpful", AUX_SETS["helpful"], ["autolambda", "arml", "auxilearn_linear", "stl"])
    assert plan.keys == ("autolambda", "autolambda_twin", "arml", "equal", "auxilearn_linear", "stl")
    assert plan.twins["autolambda"] == Twin("autolambda_twin", "autolambda", FROZEN) and plan.twins["autolambda"].frozen
    assert plan.twins["arml"] == plan.twins["auxilearn_linear"] == Twin("equal", "equal")
    assert "stl" not in plan.twins
    assert plan.sources()["autolambda_twin"] == ("autolambda", FROZEN) and plan.sources()["equal"] == ("equal", ())
    # a learned method whose twin is another learned method: that one's config, frozen; overhead's keys unchanged
    assert fixed_twin("maxl_fo", SPECS["maxl_fo"], "_twin") == Twin("maxl_twin", "maxl", FROZEN)
    assert TWINS["maxl_fo"].name == "maxl_frozen" and TWINS["jtds"] == Twin("equal", "equal")
    # the frozen twin's run config: its method's config with outer steps off, all else the same
    write_run_configs(plan.sources(), plan.config_dir, tmp_path)
    grid = Plan(1, "convnet4", None, True, (), tmp_path)
    twin, method = grid.config("autolambda_twin", 0), grid.config("autolambda", 0)
    assert not twin.hypergrad.enabled and method.hypergrad.enabled
    assert twin.model_dump(exclude={"hypergrad"}) == method.model_dump(exclude={"hypergrad"})


def test_a_method_that_starts_its_weights_elsewhere_than_equal_is_twinned_with_itself_frozen() -> None:
    """JTDS at its published start (1/8) has its own frozen twin, so learning is not credited with what the small
    start gives; at weight 1 (normalised) its twin is still equal weights, shared with ARML."""
    plan = set_plan("side_labels", AUX_SETS["side_labels"], ["jtds", "jtds_normalised", "arml"])
    assert plan.twins["jtds"] == Twin("jtds_twin", "jtds", FROZEN)
    assert plan.twins["jtds_normalised"] == plan.twins["arml"] == Twin("equal", "equal")
    assert plan.keys == ("jtds", "jtds_twin", "jtds_normalised", "equal", "arml")
    assert fixed_twin("jtds", SPECS["jtds"], "_twin", 1.0) == Twin("equal", "equal")


def test_final_weights_and_completeness() -> None:
    runs = [
        {"diagnostics": {"task_weight/rotation": 1.0, "task_weight/noise_labels": 0.2, "train_seconds": 3.0}},
        {"diagnostics": {"task_weight/rotation": 0.5, "task_weight/noise_labels": 0.4}},
    ]
    assert final_weights(runs) == {"noise_labels": pytest.approx(0.3), "rotation": pytest.approx(0.75)}
    assert final_weights([{"diagnostics": {"train_seconds": 1.0}}]) == {}
    ok, missing = completeness("harmful", ["stl", "jtds", "equal"], [0, 1, 2], {"stl": [0, 1, 2], "jtds": [1]})
    assert ok == ["stl (harmful)"]
    assert missing == ["jtds (harmful): missing seed(s) 0, 2", "equal (harmful): missing seed(s) 0, 1, 2"]


def _record(
    tmp_path: Path,
    aux_set: str,
    methods: list[str],
    seeds: tuple[int, ...],
    acc: dict[str, float],
    tasks: tuple[str, ...] = ("rotation", "noise_labels"),
    *,
    epochs: int = 1,
    tag: str = "quick",
    search: dict[str, float] | None = None,
) -> None:
    """Finished runs of a set as its run record file holds them, under the fingerprints the command will want
    (--quick, or another budget's table when `tag` is not "quick"); arml's runs end with a weight per task of
    `tasks`; with `search`, the weight_search runs of those weights too."""
    runs_root = (tmp_path / "runs").resolve()
    plan = set_plan(aux_set, AUX_SETS[aux_set], methods)
    if search is not None:
        found = SearchResult(search, 0.0, 1, 1, 0.0, 0.0, "")
        plan = replace(plan, extra={SEARCH_ROW: (EQUAL_WEIGHTS, found.overrides())})
    grid = Plan(epochs, "convnet4", None, tag == "quick", (), runs_root / aux_set / "configs")
    write_run_configs(plan.sources(), plan.config_dir, grid.config_dir)
    rows = {}
    for (key, seed), w in _wanted(plan, grid, seeds).items():
        weights = {f"task_weight/{t}": 0.5 + seed for t in tasks} if key == "arml" else {}
        rows[w.key] = {
            "method": key,
            "seed": seed,
            "fingerprint": w.fingerprint,
            "test_accuracy": acc[key] + 0.01 * seed,
            "final_test_accuracy": acc[key] - 0.01,
            "seconds": 100.0 + seed,
            "finished_at": f"2026-01-0{seed + 1}",
            "settings": w.settings,
            "diagnostics": {"device": "cpu", **weights},
            "command": f"python jobs/weighting.py --sets {aux_set}",
        }
    write_runs_file(tmp_path / "out" / f"weighting_{tag}.{aux_set}.runs.jsonl", rows)


def test_rows_from_finished_runs_with_twins_and_the_helpful_subset(tmp_path: Path) -> None:
    """Every wanted run is in the record files, so nothing trains: rows per set in order (method, then its twin),
    compute summed over seeds, final weights averaged, the harmful set's equal_helpful_subset from the helpful set's
    equal runs even when only the harmful set is asked for."""
    seeds = (0, 1)
    helpful = {"arml": 0.6, "equal": 0.62, "stl": 0.58, "weight_search": 0.65}
    _record(tmp_path, "helpful", ["arml", "equal", "stl"], seeds, helpful, search={"rotation": 2.0})
    _record(tmp_path, "harmful", ["arml", "equal"], seeds, {"arml": 0.61, "equal": 0.55})
    common = {"seeds": seeds, "quick": True, "out_dir": tmp_path / "out", "runs_dir": tmp_path / "runs"}

    rows = run_weighting(sets=("harmful",), methods=("arml",), **common)
    assert [(r["method"], r["aux_set"]) for r in rows] == [
        ("stl", "helpful"),
        ("equal", "helpful"),
        ("arml", "helpful"),  # on record: read, in the folder's order
        ("equal", "harmful"),
        ("equal_helpful_subset", "harmful"),
        ("arml", "harmful"),  # asked for, yet in the folder's order too
    ]
    equal, subset, arml = rows[3:]
    assert arml["twin"] == "equal" and "twin" not in equal
    assert arml["final_weights"] == {"noise_labels": pytest.approx(1.0), "rotation": pytest.approx(1.0)}
    assert equal["final_weights"] == {} and arml["compute"] == pytest.approx(201.0)
    assert subset["accuracies"] == pytest.approx([0.62, 0.63]) and subset["compute"] == pytest.approx(201.0)
    assert equal["mean"] == pytest.approx(0.555) and equal["final_mean"] == pytest.approx(0.54)

    # The helpful set asked for: its rows in the folder's order, the shared twin once; the harmful rows stay.
    # A finished weight search given as the helpful set's: its best weights (rotation 2) run on the table's seeds
    # (here on record already), a row after the set's, with the search's compute added to its runs'.
    _trial(
        tmp_path / "search",
        "t0",
        [
            {
                "best_val_accuracy": 0.6,
                "test_accuracy": 0.64,
                "time_total_s": 40.0,
                "config": {"method.task_weights.rotation": 2.0},
            }
        ],
    )
    _trial(tmp_path / "search", "t1", [{"best_val_accuracy": 0.5, "time_total_s": 10.0}])
    rows = run_weighting(
        sets=("helpful",), methods=("arml", "stl"), search_results=(f"helpful={tmp_path / 'search'}",), **common
    )
    assert [(r["method"], r["aux_set"]) for r in rows] == [
        ("stl", "helpful"),
        ("equal", "helpful"),
        ("arml", "helpful"),
        ("weight_search", "helpful"),
        ("equal", "harmful"),
        ("equal_helpful_subset", "harmful"),
        ("arml", "harmful"),
    ]
    search = rows[3]
    assert search["accuracies"] == pytest.approx([0.65, 0.66]) and search["final_mean"] == pytest.approx(0.64)
    assert search["compute"] == pytest.approx(201.0 + 50.0) and search["final_weights"] == {"rotation": 2.0}
    assert search["search"]["trials"] == 2 and search["search"]["test_accuracy"] == 0.64
    written = json.loads((tmp_path / "out" / "weighting_quick.json").read_text())
    assert written == json.loads(json.dumps(rows))
    # The issue's row format, and both model selections (best on validation, last epoch) with their spreads.
    issue = "method aux_set mean std accuracies seconds compute final_weights"
    assert set(written[0]) >= {*issue.split(), "final_mean", "final_std", "final_accuracies", "seeds"}
    page = (tmp_path / "out" / "weighting_quick.md").read_text()
    assert "| arml | equal | -2.0 | -2.0 | 1.00 |" in page and "python jobs/weighting.py --quick" in page
    # The commands that trained the runs shown, each once, in the order their runs first finished.
    trained = "```\npython jobs/weighting.py --sets helpful\npython jobs/weighting.py --sets harmful\n```"
    assert trained in page
    assert f"--search-result helpful={tmp_path / 'search'}" in page
    # The carried set (harmful, not asked for) is headed by its tasks, though its first config (stl) weighs none.
    assert "## Aux set: harmful (rotation, consistency, pseudo_labels, noise_labels)" in page
    # The search is kept: a later invocation that carries the helpful set shows its weight_search row unasked.
    again = run_weighting(sets=("harmful",), methods=("arml",), **common)
    assert [r for r in again if r["method"] == "weight_search"] == [search]


def test_a_run_another_set_finished_with_the_same_config_is_not_trained_again(tmp_path: Path, capsys) -> None:
    """STL weighs no auxiliary task, so its config is the same in every set: the harmful set's STL row is the
    helpful set's runs (on record there only), nothing trains, and the harmful set's record file keeps them."""
    _record(tmp_path, "helpful", ["stl"], (0,), {"stl": 0.58})
    rows = run_weighting(
        sets=("harmful",),
        methods=("stl",),
        seeds=(0,),
        quick=True,
        out_dir=tmp_path / "out",
        runs_dir=tmp_path / "runs",
    )
    by_set = {r["aux_set"]: r for r in rows if r["method"] == "stl"}
    assert by_set["harmful"]["accuracies"] == by_set["helpful"]["accuracies"] == [pytest.approx(0.58)]
    assert "stl seed 0: done before, test acc 0.5800 (skipped)" in capsys.readouterr().err
    record = tmp_path / "out" / "weighting_quick.harmful.runs.jsonl"
    assert [json.loads(line)["method"] for line in record.read_text().splitlines()] == ["stl"]
    assert not list((tmp_path / "runs").glob(f"*/*{MANIFEST_SUFFIX}"))  # no grid sweep planned


def test_the_table_shows_every_seed_on_record_not_only_the_invocations(tmp_path: Path, capsys) -> None:
    """An invocation for some seeds (here seed 0, on record) still shows each set's other recorded seeds, per row
    (arml's extra seed 3 joins its row only), so a partial run does not shrink the table; completeness is against the
    invocation's seeds; a record of a config that has since changed (seed 5's) and another set's seeds do not count."""
    _record(tmp_path, "helpful", ["arml", "equal"], (0, 1, 2), {"arml": 0.6, "equal": 0.62})
    _record(tmp_path, "harmful", ["arml", "equal"], (0,), {"arml": 0.5, "equal": 0.52})
    record = tmp_path / "out" / "weighting_quick.helpful.runs.jsonl"
    lines = record.read_text().splitlines()
    stale = json.loads(lines[0]) | {"seed": 5, "fingerprint": "changed"}
    _record(tmp_path, "helpful", ["arml"], (3,), {"arml": 0.6, "equal": 0.62})
    seed3 = [line for line in record.read_text().splitlines() if json.loads(line)["method"] == "arml"]
    record.write_text("\n".join([*lines, *seed3, json.dumps(stale)]) + "\n")
    common = {"quick": True, "out_dir": tmp_path / "out", "runs_dir": tmp_path / "runs"}
    rows = run_weighting(sets=("helpful",), methods=("arml",), seeds=(0,), **common)
    assert [(r["method"], r["aux_set"], r["seeds"]) for r in rows] == [
        ("equal", "helpful", [0, 1, 2]),
        ("arml", "helpful", [0, 1, 2, 3]),
        ("equal", "harmful", [0]),
        ("equal_helpful_subset", "harmful", [0]),
        ("arml", "harmful", [0]),
    ]
    assert rows[1]["accuracies"] == pytest.approx([0.6, 0.61, 0.62, 0.63])
    assert "incomplete" not in capsys.readouterr().err


def test_an_invocation_for_some_methods_keeps_the_rows_others_trained(tmp_path: Path, capsys) -> None:
    """--methods chooses what trains, not what the table keeps: asking for ARML alone (on record, nothing trains)
    still writes the asked set's STL and equal rows, every row in the folder's order whichever method was asked, so
    rows keep their place from one invocation to the next; a config with no runs (autolambda) has no row and is not
    reported missing."""
    _record(tmp_path, "helpful", ["arml", "equal", "stl"], (0,), {"arml": 0.6, "equal": 0.62, "stl": 0.58})
    common = {"seeds": (0,), "quick": True, "out_dir": tmp_path / "out", "runs_dir": tmp_path / "runs"}
    rows = run_weighting(sets=("helpful",), methods=("arml",), **common)
    assert [(r["method"], r["aux_set"]) for r in rows] == [
        ("stl", "helpful"),
        ("equal", "helpful"),
        ("arml", "helpful"),
    ]
    written = json.loads((tmp_path / "out" / "weighting_quick.json").read_text())
    assert [r["method"] for r in written] == ["stl", "equal", "arml"]
    assert rows[2]["twin"] == "equal" and rows[2]["mean"] == pytest.approx(0.6)
    err = capsys.readouterr().err
    assert "[weighting] complete: arml (helpful)" in err and "autolambda" not in err and "incomplete" not in err


def test_status_reports_what_is_finished_and_left_without_training_or_writing(tmp_path: Path, capsys) -> None:
    """--status: the rows of the finished runs (arml and equal on seed 0), and per set the runs still to train
    (seed 1 of both), with nothing trained and no table written (the record file as it was)."""
    _record(tmp_path, "helpful", ["arml", "equal"], (0,), {"arml": 0.6, "equal": 0.62})
    record = tmp_path / "out" / "weighting_quick.helpful.runs.jsonl"
    before = record.read_text()
    rows = run_weighting(
        sets=("helpful",), methods=("arml",), seeds=(0, 1), quick=True, status=True,
        out_dir=tmp_path / "out", runs_dir=tmp_path / "runs",
    )  # fmt: skip
    assert [(r["method"], r["seeds"]) for r in rows] == [("equal", [0]), ("arml", [0])]
    err = capsys.readouterr().err
    assert "[weighting] helpful: 2 of 4 runs finished; to train: arml seed 1, equal seed 1" in err
    assert "[weighting] incomplete: arml (helpful): missing seed(s) 1" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [record.name] and record.read_text() == before
    assert not (tmp_path / "runs" / "helpful" / "configs" / "arml_twin.yaml").exists()  # no run config written
    assert cli_run(["bench", "weighting", "--quick", "--status", "--fresh", "--out-dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "auxray: error: --status trains nothing and forgets nothing; drop --fresh"


def test_another_budget_is_a_table_of_its_own(tmp_path: Path) -> None:
    """--epochs other than the configs' 30 writes weighting_<tag>_<N>ep.* and leaves the shipped table's files
    alone; the page says the budget."""
    seeds = (0,)
    _record(tmp_path, "helpful", ["stl"], seeds, {"stl": 0.7}, epochs=300, tag="cifar10_5pct_semisup_300ep")
    common = {"seeds": seeds, "out_dir": tmp_path / "out", "runs_dir": tmp_path / "runs"}
    rows = run_weighting(sets=("helpful",), methods=("stl",), epochs=300, **common)
    assert [(r["method"], r["mean"]) for r in rows] == [("stl", pytest.approx(0.7))]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "weighting_cifar10_5pct_semisup_300ep.helpful.runs.jsonl",
        "weighting_cifar10_5pct_semisup_300ep.json",
        "weighting_cifar10_5pct_semisup_300ep.md",
        "weighting_cifar10_5pct_semisup_300ep_compute.png",
    ]
    assert "convnet4, 300 epochs" in (tmp_path / "out" / "weighting_cifar10_5pct_semisup_300ep.md").read_text()


def test_the_side_label_set_plans_as_the_harmful_set_and_its_rows_name_the_table_tasks(tmp_path: Path) -> None:
    """The side-label folder has the harmful folder's methods and twins but those about pseudo-labels (a task it does
    not have); its rows carry a final weight per table task (no equal_helpful_subset row: no other set is its helpful
    subset) and the page names the table's tasks."""
    side, harmful = (set_plan(s, AUX_SETS[s], None) for s in ("side_labels", "harmful"))
    pseudo_only = {"jtds_learned_confidence", "jtds_learned_confidence_twin"}
    assert side.keys == tuple(k for k in harmful.keys if k not in pseudo_only)
    assert side.twins == {m: t for m, t in harmful.twins.items() if m not in pseudo_only}
    tasks = ("animal", "flies", "road_vehicle", "brightness", "random")
    seeds = (0, 1)
    _record(tmp_path, "side_labels", ["arml", "equal"], seeds, {"arml": 0.6, "equal": 0.59}, tasks)
    rows = run_weighting(
        sets=("side_labels",),
        methods=("arml",),
        seeds=seeds,
        quick=True,
        out_dir=tmp_path / "out",
        runs_dir=tmp_path / "runs",
    )
    assert [(r["method"], r["aux_set"]) for r in rows] == [("equal", "side_labels"), ("arml", "side_labels")]
    assert rows[1]["final_weights"] == {t: pytest.approx(1.0) for t in tasks}
    page = (tmp_path / "out" / "weighting_quick.md").read_text()
    assert f"## Aux set: side_labels (table ({', '.join(tasks)}))" in page


def test_every_method_of_the_side_label_folder_plans_beside_stl(tmp_path: Path) -> None:
    """STL reads no side-label table, yet it is the side set's row like any other: the table names auxiliary tasks (as
    method.aux_task does), so it is not a setting methods must share; data settings that are shared still are."""
    side = set_plan("side_labels", AUX_SETS["side_labels"], None)
    plan = Plan(None, "convnet4", None, False, (), tmp_path / "configs")
    write_run_configs(side.sources(), side.config_dir, plan.config_dir)
    wanted = _wanted(side, plan, (0,))
    assert wanted["stl", 0].fingerprint != wanted["equal", 0].fingerprint
    assert {k for k, _ in wanted} == set(side.keys) and "stl" in side.keys
    stl = plan.config_dir / "stl.yaml"
    stl.write_text(stl.read_text().replace("unlabeled_batch_size: 64", "unlabeled_batch_size: 32"))
    with pytest.raises(UserError, match="data.unlabeled_batch_size: 32 \\(stl\\) vs 64"):
        _wanted(side, plan, (0,))


def _trial(folder: Path, name: str, results: list[dict]) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results) + '{"torn')


def test_a_weight_search_is_read_from_its_sweep_folder_or_json(tmp_path: Path) -> None:
    """The best trial on validation among those that ran every epoch gives the weights; compute is every trial's
    seconds; a sweep with no finished trial, none at all, or no weights searched is one line."""
    exp = tmp_path / "weight_search_semisup"
    params = {"method.task_weights.rotation": 0.5, "method.task_weights.consistency": 2.0}
    _trial(
        exp,
        "t0",
        [
            {"best_val_accuracy": 0.5, "time_total_s": 5.0},
            {"best_val_accuracy": 0.6, "test_accuracy": 0.58, "time_total_s": 10.0, "config": params},
        ],
    )
    _trial(exp, "t1", [{"best_val_accuracy": 0.7, "time_total_s": 3.0}])  # stopped by ASHA: not chosen
    _trial(exp, "t2", [{"best_val_accuracy": 0.55, "test_accuracy": 0.6, "time_total_s": 9.0, "config": {}}])
    found = read_search(exp)
    assert found.weights == {"rotation": 0.5, "consistency": 2.0} and found.compute == pytest.approx(22.0)
    assert (found.trials, found.trials_complete, found.test_accuracy) == (3, 2, 0.58)
    assert found.overrides() == ("method.task_weights.consistency=2.0", "method.task_weights.rotation=0.5")
    found.save(tmp_path / "kept.json")
    assert SearchResult.load(tmp_path / "kept.json") == found and SearchResult.load(tmp_path / "none.json") is None
    summary = tmp_path / "sweep.json"
    summary.write_text(json.dumps({"experiment_dir": str(exp), "best": {}}) + "\n")
    assert read_search(summary) == found
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no trial results"):
        read_search(tmp_path / "empty")
    _trial(tmp_path / "running", "t0", [{"best_val_accuracy": 0.5, "time_total_s": 5.0}])
    with pytest.raises(UserError, match="no trial ran every epoch yet"):
        read_search(tmp_path / "running")
    _trial(tmp_path / "other", "t0", [{"best_val_accuracy": 0.5, "test_accuracy": 0.5, "config": {"trainer.lr": 1}}])
    with pytest.raises(UserError, match="sets no method.task_weights.<task>; not a weight search"):
        read_search(tmp_path / "other")


def test_a_set_without_its_config_folder_is_one_line_exit_2(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(AUX_SETS, "side_labels", AUX_SETS["side_labels"].with_name("cifar10_5pct_semisup_nowhere"))
    out = tmp_path / "out"
    argv = ["--sets", "side_labels", "--out-dir", str(out), "--runs-dir", str(tmp_path / "r")]
    assert cli_run(["bench", "weighting", "--quick", *argv]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "auxray: error: aux-task set(s) without a config folder yet: side_labels (configs/cifar10_5pct_semisup_nowhere)"
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sets", "helpful,unlabelled"], "unknown aux-task set(s) ['unlabelled']; choose from helpful, harmful"),
        (["--methods", "stl,nope"], "unknown method(s) ['nope'] for aux-task set helpful; choose from stl, equal"),
        (
            ["--sets", "side_labels", "--methods", "jtds_learned_confidence"],
            "unknown method(s) ['jtds_learned_confidence'] for aux-task set side_labels",
        ),
        (["--search-result", "harmful=/nonexistent"], "--search-result /nonexistent: no such file or folder"),
        (["--seeds", "0,x"], "--seeds expects comma-separated integers"),
        (["--gpus-per-trial", "-1"], "--gpus-per-trial must be at least 0, got -1"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    out = tmp_path / "out"
    code = cli_run(["bench", "weighting", "--quick", "--out-dir", str(out), "--runs-dir", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"auxray: error: {message}"), err
    assert not out.exists()


@pytest.mark.slow
def test_more_gpus_per_trial_than_the_cluster_has_is_one_line_before_any_training(tmp_path: Path, capsys) -> None:
    """On a machine without GPUs the trials could never start: one line and exit 2 once Ray is up, nothing trained."""
    out, runs = tmp_path / "out", tmp_path / "r"
    argv = ["--methods", "stl", "--gpus-per-trial", "0.5", "--out-dir", str(out), "--runs-dir", str(runs)]
    code = cli_run(["bench", "weighting", "--quick", "--sets", "helpful", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == "auxray: error: --gpus-per-trial is 0.5 but the Ray cluster has 0 GPUs", err
    assert not out.exists() and not list(runs.glob("helpful/*/trials"))
