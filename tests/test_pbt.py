"""Population-based training over auxiliary weights (`scheduler: pbt` in a sweep): what it may perturb (fast), the
outer optimizer keeping the config's learning rate across a copied checkpoint (fast), and a real tiny PBT sweep on
Ray Tune in which trials copy another's checkpoint and go on with perturbed task weights, then resume (slow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from auxray.errors import UserError
from auxray.method_settings import OuterOptimizer
from auxray.train.phi_optimizer import PhiOptimizer
from auxray.tune.config import load_sweep
from tests.conftest import CACHE_DIR, tiny_cifar_raw

WEIGHT_KEY = "method.task_weights.rotation"


def write_pbt(tmp_path: Path, cifar_zip: Path, **extra: Any) -> Path:
    """Four trials of equal weights on rotation with a searched rotation weight, 4 one-step epochs, PBT every epoch."""
    base = tiny_cifar_raw(cifar_zip, tmp_path, name="equal", aux_task="rotation")
    base["data"]["labeled_per_class"] = 10
    base["trainer"].pop("checkpoint_dir")
    base["trainer"].update(threads=1, epochs=4, max_steps_per_epoch=2)
    base["tracking"] = {"experiment": "pbt"}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "name": "pbt",
        "base": "base.yaml",
        "overrides": {"data.cache_dir": str(CACHE_DIR)},
        "space": {WEIGHT_KEY: {"type": "loguniform", "low": 0.01, "high": 4.0}},
        "search": "random",
        "trials": 4,
        "concurrency": 4,
        "cpus_per_trial": 0.5,
        "scheduler": {
            "type": "pbt",
            "perturbation_interval": 1,
            "quantile_fraction": 0.5,
            "resample_probability": 0,
            "synch": True,  # every trial reaches each interval before the bottom half copies the top: 3 rounds
        },
        "storage": str(tmp_path / "sweeps"),
        **extra,
    }
    path = tmp_path / "pbt.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"search": "tpe"}, "scheduler: pbt mutates each trial's settings as it trains; use search: random"),
        (
            {"space": {"trainer.lr": {"type": "uniform", "low": 0.01, "high": 0.1}}},
            "trainer.lr would be ignored or change the data mid-run",
        ),
    ],
)
def test_what_pbt_cannot_perturb_is_one_line(tmp_path: Path, cifar_zip: Path, change: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_sweep(write_pbt(tmp_path, cifar_zip, **change))


def test_pbt_perturbs_the_searched_keys(tmp_path: Path, cifar_zip: Path) -> None:
    from ray.tune.schedulers import PopulationBasedTraining

    from auxray.tune.space import scheduler_for

    sweep = load_sweep(write_pbt(tmp_path, cifar_zip))
    scheduler = scheduler_for(sweep, sweep.epochs)
    assert isinstance(scheduler, PopulationBasedTraining)
    assert set(scheduler._hyperparam_mutations) == {WEIGHT_KEY} and scheduler._perturbation_interval == 1
    assert sweep.trial_config({WEIGHT_KEY: 0.5}).method.task_weights == {"rotation": 0.5}


def test_a_copied_outer_optimizer_state_keeps_the_configs_learning_rate() -> None:
    """An exploit restores another trial's phi optimizer under perturbed settings: the moments come from the
    state, the learning rate and weight decay from this trial's config (a plain resume: the same values)."""
    net = nn.Linear(2, 1)
    donor = PhiOptimizer(net, OuterOptimizer(lr=0.01))
    donor.apply([torch.ones(1, 2), torch.ones(1)], step=1)
    perturbed = PhiOptimizer(net, OuterOptimizer(lr=0.012, weight_decay=0.0))
    perturbed.load_state_dict(donor.state_dict())
    group = perturbed.optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.012, 0.0)
    moments = perturbed.optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(moments, donor.optimizer.state_dict()["state"][0]["exp_avg"]) and perturbed.version == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_pbt_sweep_copies_checkpoints_perturbs_weights_and_resumes(tmp_path: Path, cifar_zip: Path) -> None:
    import json

    from auxray.tune.sweep import run_sweep

    sweep = load_sweep(write_pbt(tmp_path, cifar_zip))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result = run_sweep(sweep, tracking_uri=uri, progress=False)
    assert (result["trials"], result["completed"], result["errored"]) == (4, 4, 0), result
    # Tune's PBT log, one line per exploit: [target tag, donor tag, target's iteration, donor's iteration, the
    # donor's config, the perturbed config the target goes on with]; a tag starts with the trial's index.
    exploits = [json.loads(line) for line in (sweep.experiment_dir / "pbt_global.txt").read_text().splitlines()]
    assert len(exploits) >= 3, exploits  # the bottom half copies the top at each of the 3 inner intervals
    by_index = {int(row["trial_id"].rsplit("_", 1)[1]): row for row in result["per_trial"]}
    for index, row in by_index.items():
        mine = [e for e in exploits if int(e[0].split("_", 1)[0]) == index]
        attempts = [
            json.loads(line)
            for line in (sweep.trial_files_dir(row["trial_id"]) / "attempts.jsonl").read_text().splitlines()
        ]
        # An exploited trial went on from a copied checkpoint: it restarted past epoch 0 (synch mode also pauses
        # and restores every trial at each interval, so restarts outnumber exploits).
        if mine:
            assert len(attempts) > len(mine) and all(a["start_epoch"] > 0 for a in attempts[1:]), (attempts, mine)
        for e in mine:
            assert e[4] != e[5] and set(e[5]) == {WEIGHT_KEY}, e  # the donor's weight, perturbed
        if mine:  # the trial ends with the last perturbed weight
            assert row["params"][WEIGHT_KEY] == pytest.approx(mine[-1][5][WEIGHT_KEY]), (row, mine)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("pbt").experiment_id])
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result["parent_run_id"]]
    assert len(kids) == 4 and all(k.info.status == "FINISHED" for k in kids)

    again = run_sweep(load_sweep(tmp_path / "pbt.yaml"), resume=True, tracking_uri=uri, progress=False)
    assert again["resumed"] and again["completed"] == 4
    assert {r["trial_id"] for r in again["per_trial"]} == {r["trial_id"] for r in result["per_trial"]}
