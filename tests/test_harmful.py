"""`auxray bench harmful`: every learned weighting on the synthetic helpful/harmful task beside its fixed twin, the
summary the page shows, and bad input as one line."""

from __future__ import annotations

import json

import pytest

from auxray.bench.harmful import harmful_check, one_run_per_twin, twin_of, variant_config, variants
from auxray.bench.harmful_page import render_harmful, summarise
from tests.test_cli import assert_one_line_error, in_process


def _row(variant: str, seed: int, helpful: float, harmful: float, mse: float, start: float = 1.0) -> dict:
    return {
        "variant": variant,
        "seed": seed,
        "initial_weights": {"helpful": start, "harmful": start},
        "weights": {"helpful": helpful, "harmful": harmful},
        "val_mse": mse,
    }


TWIN = "equal"  # the fixed twin of the variants that start at weight 1: the folder's one fixed method


def test_each_variant_names_its_own_fixed_twin_the_same_start_with_nothing_learned() -> None:
    assert {"arml", "autolambda", "forkmerge", "combiner_full", "jtds_sum_to_k"} <= set(variants())
    assert twin_of(TWIN) is None
    assert twin_of("arml") is not None and (twin_of("arml").name, twin_of("arml").overrides) == (TWIN, ())
    auto = twin_of("autolambda")  # Auto-lambda starts at 0.1: equal (at 1) is not its start, itself frozen is
    assert auto is not None and (auto.name, auto.config) == ("autolambda_twin", "autolambda")
    frozen = variant_config(auto.config, 0, auto.overrides)
    assert not frozen.hypergrad.enabled and frozen.method.name == "autolambda"


def test_frozen_twins_that_differ_only_in_outer_settings_are_one_run() -> None:
    """Auto-lambda with and without its lower bound frozen are the same run (outer.* does nothing without outer
    steps), so the check trains it once; the fixed twin equal stays one run shared by ARML and the combiner."""
    names = ["autolambda", "autolambda_nonnegative", "arml", "combiner_full"]
    twins = one_run_per_twin({v: t for v in names if (t := twin_of(v)) is not None})
    assert twins["autolambda_nonnegative"] == twins["autolambda"] == twin_of("autolambda")
    assert twins["arml"].name == TWIN
    assert twins["combiner_full"] == twins["arml"]
    assert len({t.name for t in twins.values()}) == len({twin_of(v).name for v in names}) - 1


def test_the_summary_counts_seeds_and_compares_with_the_twin_on_the_same_seed() -> None:
    data = {
        "config": "configs/synthetic_combine.yaml",
        "twins": {"arml": TWIN, "autolambda": "autolambda_twin"},
        "seeds": [0, 1],
        "rows": [
            _row("arml", 0, 1.9, 0.1, 1.0),  # harmful lowest and below a quarter of the largest
            _row("arml", 1, 1.2, 0.8, 3.0),  # lowest, not below a quarter
            _row("autolambda", 0, 0.1, 0.3, 0.5, start=0.1),  # harmful above helpful
            _row(TWIN, 0, 1.0, 1.0, 2.0),
            _row(TWIN, 1, 1.0, 1.0, 2.5),
            _row("autolambda_twin", 0, 0.1, 0.1, 0.75, start=0.1),  # its own twin, not equal
        ],
    }
    by = {s["variant"]: s for s in summarise(data)}
    arml, auto = by["arml"], by["autolambda"]
    assert (arml["harmful_lowest"], arml["harmful_below_quarter"], arml["seeds"]) == (2, 1, 2)
    assert arml["moved"] == pytest.approx(((0.9 + 0.9) / 2 + (0.2 + 0.2) / 2) / 2)
    assert arml["mse_vs_twin"] == pytest.approx(((1.0 - 2.0) + (3.0 - 2.5)) / 2) and arml["better_than_twin"] == 1
    assert auto["harmful_lowest"] == 0 and auto["moved"] == pytest.approx((0.0 + 2.0) / 2)
    assert auto["mse_vs_twin"] == pytest.approx(0.5 - 0.75) and auto["better_than_twin"] == 1
    lines = {line.split(" | ")[0].strip("| "): line for line in render_harmful(data).splitlines()}
    assert "| `equal` | 2/2 | 1/2 |" in lines["arml"] and "| `autolambda_twin` | 0/1 | 0/1 |" in lines["autolambda"]
    for twin in (TWIN, "autolambda_twin"):  # a twin learns nothing: its twin and learning columns are blank
        assert lines[twin].count("–") == 6


def test_arml_weighs_the_harmful_task_lowest_and_the_twins_keep_their_start() -> None:
    """A real run of three variants: their twins are added unasked, a shared one once; every weight starts where
    its method starts (JTDS's by-product weights included), ARML ends with the harmful task lowest and a lower
    error than its twin, and Auto-lambda's own frozen twin keeps Auto-lambda's initial 0.1."""
    result = harmful_check(("arml", "jtds_sum_to_k", "autolambda"), seeds=(0,))
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["arml", "jtds_sum_to_k", "autolambda", TWIN, "autolambda_twin"] and result["seeds"] == [0]
    assert result["twins"] == {"arml": TWIN, "jtds_sum_to_k": TWIN, "autolambda": "autolambda_twin"}
    auto, auto_twin = rows["autolambda"], rows["autolambda_twin"]
    assert auto_twin["weights"] == auto_twin["initial_weights"] == auto["initial_weights"]
    assert auto_twin["initial_weights"] == pytest.approx({"helpful": 0.1, "harmful": 0.1})
    arml, jtds, twin = rows["arml"], rows["jtds_sum_to_k"], rows[TWIN]
    assert arml["initial_weights"] == {"helpful": 1.0, "harmful": 1.0}
    assert arml["weights"]["harmful"] < 0.25 * arml["weights"]["helpful"], arml["weights"]
    assert arml["val_mse"] < twin["val_mse"]
    assert twin["weights"] == twin["initial_weights"] == {"helpful": 1.0, "harmful": 1.0}
    assert jtds["initial_weights"] == pytest.approx({"helpful": 1.0, "harmful": 1.0}, abs=0.01)
    assert jtds["weights"]["harmful"] < jtds["weights"]["helpful"]
    json.dumps(result)  # the CLI prints it


def test_a_variant_runs_on_the_seed_asked_for_untracked_on_one_thread() -> None:
    cfg = variant_config("arml", 3)
    assert cfg.method.name == "arml" and cfg.data.dataset == "synthetic"
    assert cfg.trainer.seed == cfg.data.seed == 3 and not cfg.tracking.enabled and cfg.trainer.threads == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--variants", "arml,nope"], "unknown variant(s) ['nope']"),
        (["--seeds", "0,x"], "--seeds expects comma-separated integers"),
        (["--seeds", "1,1"], "--seeds must name distinct seeds"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str, capsys, tmp_path) -> None:
    out = tmp_path / "h.json"
    assert_one_line_error(in_process(capsys, "bench", "harmful", *args, "--out", str(out)), needle)
    assert not out.exists()
