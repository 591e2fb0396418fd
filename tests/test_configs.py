"""Every shipped config validates and plans, and trains as it promises: each run config for one short epoch through
`auxray train`, and each sweep config's trials at both ends of its search space. The noise family differs from the
semi-supervised one only by its noise_labels task, the side-label family only by its table tasks in place of the
built-in ones (both checked), so one config of each trains for its family. Short: one epoch
of `hypergrad.every` steps for a learned method (so it takes exactly one outer step), two for a fixed one, and 200
test images, in this process (torch is imported once for all of them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from auxray.auxnets.uncertainty import LOSS_FLOOR
from auxray.cli import run as cli_run
from auxray.config import RunConfig, load_config
from auxray.data import DataBundle, build_data
from auxray.method_specs import SPECS
from auxray.train.checkpoint import LATEST, load_checkpoint
from auxray.train.launch import train
from auxray.train.loop import BilevelTrainer
from auxray.train.run_plan import plan_run
from auxray.tune.config import load_sweep
from tests.conftest import CACHE_DIR, REPO

CONFIGS = REPO / "configs"
SHIPPED = sorted(CONFIGS.rglob("*.yaml"))
SWEEPS = [p for p in SHIPPED if "space" in yaml.safe_load(p.read_text())]
RUNS = [p for p in SHIPPED if p not in SWEEPS]
SEMISUP, NOISE = CONFIGS / "cifar10_5pct_semisup", CONFIGS / "cifar10_5pct_semisup_noise"
SIDE = CONFIGS / "cifar10_5pct_semisup_side"
NOISE_TRAINED = NOISE / "auxilearn_linear.yaml"  # learns a weight for each task, the noise task included
SIDE_TRAINED = SIDE / "auxilearn_linear.yaml"  # learns a weight for each table task, the random one included
FAMILY_TRAINED = {NOISE: NOISE_TRAINED, SIDE: SIDE_TRAINED}
TRAINED = [p for p in RUNS if FAMILY_TRAINED.get(p.parent, p) == p]
# The methods that log a weight per task.
WEIGHING = ("auxilearn_combine", "jtds", "uncertainty", "forkmerge", "arml", "autolambda", "forkmerge_arml")
OWN_RULE = ("arml", "forkmerge_arml")  # learned methods whose gradient rule sets their weights: no outer steps
SYNTHETIC_TASKS = ("helpful", "harmful")  # the synthetic data set's auxiliary targets (aux_task: targets)
TEST_IMAGES = 200


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(CONFIGS)) for p in paths]


def steps(cfg: RunConfig) -> int:
    """Inner steps of the short run: enough for a learned method's one outer step, two for a fixed method."""
    return cfg.hypergrad.every if SPECS[cfg.method.name].learns else 2


def short(cfg: RunConfig, tmp_path: Path) -> dict[str, Any]:
    """Settings for a seconds-long run of cfg that still takes an outer step and writes only under tmp_path: batches
    of 16 (labelled and unlabelled), one epoch of `steps`, 200 test images, on the CPU (a GPU machine runs these the
    same; tests/test_gpu.py covers the device)."""
    return {
        "trainer.device": "cpu",
        "trainer.epochs": 1,
        "trainer.max_steps_per_epoch": steps(cfg),
        "data.test_limit": TEST_IMAGES,
        "trainer.batch_size": 16,
        "data.unlabeled_batch_size": 16,
        "trainer.checkpoint_dir": str(tmp_path),
        "data.cache_dir": str(CACHE_DIR),
        "tracking.enabled": False,
    }


def task_names(cfg: RunConfig) -> tuple[str, ...]:
    """The auxiliary tasks cfg trains, by the names its history logs them under."""
    if SPECS[cfg.method.name].learns_labels:
        return ("labels",)
    expand = {"none": (), "targets": SYNTHETIC_TASKS, "table": tuple(t.name for t in cfg.data.aux_columns)}
    return tuple(name for task in cfg.method.aux_tasks for name in expand.get(task, (task,)))


_DATA: dict[str, DataBundle] = {}  # the last data built: configs of one family, tested in a row, share it


def initial_phi(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """phi as a run of cfg starts: a trainer of the same config (same seed) holds it."""
    key = cfg.data.model_dump_json() + repr(cfg.method.aux_tasks)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = build_data(cfg.data, cfg.method.aux_tasks)
    trainer = BilevelTrainer(cfg, _DATA[key], progress=False)
    return {name: p.detach().cpu().clone() for name, p in trainer.auxnet.named_parameters()}


def assert_one_adam_step(
    before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], optimizer: dict[str, Any], hypergrad_norm: float
) -> None:
    """phi moved by one Adam step, lr * g / (|g| + eps) against g = the logged hypergradient + weight decay."""
    (group,) = optimizer["param_groups"]
    lr, beta1, eps, decay = group["lr"], group["betas"][0], group["eps"], group["weight_decay"]
    hypergrad = []
    for i, (name, start) in enumerate(before.items()):
        state = optimizer["state"][i]
        g = state["exp_avg"].cpu() / (1 - beta1)
        assert int(state["step"]) == 1, name
        torch.testing.assert_close(after[name].cpu() - start, -lr * g / (g.abs() + eps), rtol=1e-4, atol=1e-6)
        hypergrad.append((g - decay * start).flatten())
    assert float(torch.cat(hypergrad).norm()) == pytest.approx(hypergrad_norm, rel=1e-3)


def assert_promises(result: dict[str, Any], cfg: RunConfig) -> None:
    """A short run of cfg kept its promises: its steps and test, each task logged, the outer step, pool batches."""
    n = steps(cfg)
    assert (result["method"], result["epochs"], result["steps"]) == (cfg.method.name, 1, n)
    run_dir = Path(result["run_dir"])
    (epoch,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    state = load_checkpoint(run_dir / LATEST)
    assert state["history"] == [epoch] and epoch["step"] == n
    # One epoch: its weights are the best on validation, and the test scores them.
    score = "mse" if cfg.data.dataset == "synthetic" else "accuracy"
    assert result["best_epoch"] == 1 and result[f"best_val_{score}"] == epoch[f"val_{score}"]
    assert result[f"test_{score}"] == result[f"final_test_{score}"]
    if score == "accuracy":  # a count of correct images out of TEST_IMAGES
        correct = result["test_accuracy"] * TEST_IMAGES
        assert correct == pytest.approx(round(correct), abs=1e-9), result

    tasks = task_names(cfg)
    for task in tasks:
        assert f"aux_loss/{task}" in epoch and f"grad_cosine/{task}" in epoch, (task, epoch)
    weighed = {f"task_weight/{t}" for t in tasks} if cfg.method.name in WEIGHING else set()
    assert {k for k in epoch if k.startswith("task_weight/")} == weighed, epoch

    if cfg.method.name in OWN_RULE:  # alpha took its one step at the last inner step and stayed on the simplex
        alpha = state["auxnet"]["weights"]
        assert int(state["auxnet"]["steps"]) == n and float(alpha.sum()) == pytest.approx(len(tasks))
        assert "outer_steps" not in epoch and state["phi"] is None
        assert torch.equal(alpha, torch.ones_like(alpha)) == (len(tasks) == 1)  # one task: sum alpha = 1 pins it
    elif SPECS[cfg.method.name].learns:
        assert cfg.outer.optimizer == "adam" and cfg.outer.grad_clip is None, "a phi step other than Adam's"
        ((at, norm),) = state["hypergrad_norms"]
        assert (at, norm) == (n, epoch["hypergrad_norm"]) and epoch["outer_steps"] == 1
        assert (state["phi"]["version"], state["phi"]["last_step"]) == (1, n)
        assert_one_adam_step(initial_phi(cfg), state["auxnet"], state["phi"]["optimizer"], norm)
    else:
        assert "outer_steps" not in epoch and state["hypergrad_norms"] == [] and state["phi"] is None
    if cfg.method.name == "uncertainty":
        # Weights start at 1 (log-variance 0) and move with W: down for a task whose loss plus the floor is above 1
        # (its log-variance's gradient 1 - (loss + floor) is then negative), up for one below.
        assert not torch.equal(state["auxnet"]["log_vars"], torch.zeros_like(state["auxnet"]["log_vars"]))
        for task in tasks:
            assert (epoch[f"task_weight/{task}"] < 1) == (epoch[f"aux_loss/{task}"] + LOSS_FLOOR > 1), (task, epoch)

    draws_pool = cfg.data.unlabeled != "none" and cfg.method.name != "stl" and bool(tasks)
    if draws_pool:
        assert (state["pool"]["epoch"], state["pool"]["position"]) == (0, n), state["pool"]
    else:
        assert state["pool"] is None


@pytest.mark.parametrize("config", SHIPPED, ids=ids(SHIPPED))
def test_every_shipped_config_validates_and_plans(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every config (a sweep's trials at both ends) loads and plans: data found, run folder named, nothing made."""
    monkeypatch.chdir(REPO)  # the shipped data roots are relative to the repository (../shared/data)
    if config in SWEEPS:
        sweep = load_sweep(config)
        name, cfgs = (
            sweep.name,
            [sweep.trial_config({k: s.samples()[end] for k, s in sweep.space.items()}) for end in (0, -1)],
        )
    else:
        name, cfgs = config.stem, [load_config(config)]
    for cfg in cfgs:
        cfg.trainer.checkpoint_dir = str(tmp_path / "runs")
        plan = plan_run(cfg, name=name, resume=False)
        assert plan.folder.startswith(f"{name}/") and Path(plan.cfg.data.root).is_absolute(), plan
        assert plan.run_dir == Path(plan.cfg.trainer.checkpoint_dir) / plan.folder and plan.run_dir.is_absolute()
    assert not any(tmp_path.iterdir())


def test_the_noise_configs_add_only_the_noise_task_to_their_semisup_twins() -> None:
    """One noise config trains for all: each is its semi-supervised twin with noise_labels added to its tasks."""
    noise = sorted(NOISE.glob("*.yaml"))
    assert NOISE_TRAINED in noise and len(noise) > 1
    for path in noise:
        twin = yaml.safe_load((SEMISUP / path.name).read_text())
        if "aux_task" in twin["method"]:
            twin["method"]["aux_task"] = [*twin["method"]["aux_task"], "noise_labels"]
        assert yaml.safe_load(path.read_text()) == twin, path.name


def test_the_side_configs_swap_only_the_tasks_of_their_semisup_twins_for_the_table() -> None:
    """One side-label config trains for all: each is its semi-supervised twin with the built-in auxiliary tasks
    replaced by the table's, one table and its tasks shared by all (STL, which trains none, unchanged), and the family
    holds the noise family's methods but those about pseudo-labels, a task the side set does not have."""
    side = sorted(SIDE.glob("*.yaml"))
    pseudo_only = {"jtds_learned_confidence.yaml"}
    noise = sorted(p.name for p in NOISE.glob("*.yaml") if p.name not in pseudo_only)
    assert SIDE_TRAINED in side and [p.name for p in side] == noise
    tables = []
    for path in side:
        raw, twin = yaml.safe_load(path.read_text()), yaml.safe_load((SEMISUP / path.name).read_text())
        if "aux_task" in twin["method"]:
            twin["method"]["aux_task"] = ["table"]
            tables.append({key: raw["data"].pop(key) for key in ("aux_table", "aux_columns")})
        assert raw == twin, path.name
    assert len(tables) == len(side) - 1 and all(table == tables[0] for table in tables)
    assert (REPO / tables[0]["aux_table"]).is_file()  # relative to the repository, as data.root is


@pytest.mark.slow
@pytest.mark.parametrize("config", TRAINED, ids=ids(TRAINED))
def test_every_shipped_run_config_trains_as_it_promises(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One short epoch of the config through `auxray train` keeps every promise the config makes."""
    monkeypatch.chdir(REPO)  # the shipped data roots are relative to the repository (../shared/data)
    settings = short(load_config(config), tmp_path)
    cfg = load_config(config, [f"{key}={value}" for key, value in settings.items()])
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    capsys.readouterr()
    assert cli_run(["train", str(config), "--json", "--no-progress", *args]) == 0, capsys.readouterr().err[-3000:]
    assert_promises(json.loads(capsys.readouterr().out.strip().splitlines()[-1]), cfg)


@pytest.mark.slow
@pytest.mark.parametrize("config", SWEEPS, ids=ids(SWEEPS))
def test_every_shipped_sweep_config_builds_trials_that_train(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep's trials at the low and the high end of every searched key are valid configs that train."""
    monkeypatch.chdir(REPO)
    sweep = load_sweep(config)
    for end in (0, -1):
        cfg = sweep.trial_config({key: space.samples()[end] for key, space in sweep.space.items()})
        for key, value in short(cfg, tmp_path / str(end)).items():
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
        assert_promises(train(plan_run(cfg, name=sweep.name), progress=False), cfg)
