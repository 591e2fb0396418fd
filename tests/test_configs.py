"""Every shipped config loads and runs: each run config for one short epoch through `auxray train`, and each sweep
config's trials at both ends of its search space. Short: one epoch of `hypergrad.every` steps for a learned method
(so it takes exactly one outer step), two for a fixed one, and 200 test images, in this process (torch is imported once for all of them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from auxray.cli import run as cli_run
from auxray.config import LEARNED_METHODS, RunConfig, load_config
from auxray.train.launch import train
from auxray.tune.config import load_sweep
from tests.conftest import CACHE_DIR, REPO

SHIPPED = sorted((REPO / "configs").rglob("*.yaml"))
SWEEPS = [p for p in SHIPPED if "space" in yaml.safe_load(p.read_text())]
RUNS = [p for p in SHIPPED if p not in SWEEPS]


def steps(cfg: RunConfig) -> int:
    """Inner steps of the short run: enough for a learned method's one outer step, two for a fixed method."""
    return cfg.hypergrad.every if cfg.method.name in LEARNED_METHODS else 2


def short(cfg: RunConfig, tmp_path: Path) -> dict[str, Any]:
    """Settings for a seconds-long run of cfg that still takes an outer step and writes only under tmp_path: batches
    of 16 (labelled and unlabelled), one epoch of `steps`, 200 test images."""
    return {"trainer.epochs": 1, "trainer.max_steps_per_epoch": steps(cfg), "data.test_limit": 200,
            "trainer.batch_size": 16, "data.unlabeled_batch_size": 16,
            "trainer.checkpoint_dir": str(tmp_path), "data.cache_dir": str(CACHE_DIR), "tracking.enabled": False}


def assert_ran(result: dict[str, Any], cfg: RunConfig) -> None:
    """One epoch of `steps`, tested; a learned method took its outer step."""
    assert result["method"] == cfg.method.name and result["epochs"] == 1 and result["steps"] == steps(cfg)
    assert "test_accuracy" in result or "test_mse" in result
    (epoch,) = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert epoch.get("outer_steps", 0) == (1 if cfg.method.name in LEARNED_METHODS else 0), epoch


@pytest.mark.slow
@pytest.mark.parametrize("config", RUNS, ids=[str(p.relative_to(REPO / "configs")) for p in RUNS])
def test_every_shipped_run_config_trains(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the shipped data roots are relative to the repository (../shared/data)
    cfg = load_config(config)
    args = [arg for key, value in short(cfg, tmp_path).items() for arg in ("--set", f"{key}={value}")]
    capsys.readouterr()
    assert cli_run(["train", str(config), "--json", "--no-progress", *args]) == 0, capsys.readouterr().err[-3000:]
    assert_ran(json.loads(capsys.readouterr().out.strip().splitlines()[-1]), cfg)


@pytest.mark.slow
@pytest.mark.parametrize("config", SWEEPS, ids=[str(p.relative_to(REPO / "configs")) for p in SWEEPS])
def test_every_shipped_sweep_config_builds_trials_that_train(config: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep's trials at the low and the high end of every searched key are valid configs that train."""
    monkeypatch.chdir(REPO)
    sweep = load_sweep(config)
    for end in (0, -1):
        cfg = sweep.trial_config({key: space.samples()[end] for key, space in sweep.space.items()})
        for key, value in short(cfg, tmp_path / str(end)).items():
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
        assert_ran(train(cfg, name=sweep.name, progress=False), cfg)
