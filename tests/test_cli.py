"""The `auxray` command line as a user meets it: bad input, JSON summaries, resume, every shipped config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import CACHE_DIR, REPO, tiny_cifar_raw

CIFAR_5PCT = sorted((REPO / "configs" / "cifar10_5pct").glob("*.yaml"))


def auxray(*args: str, cwd: Path = REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auxray.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def write_config(tmp_path: Path, raw: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_config_file(tmp_path):
    assert_one_line_error(auxray("train", str(tmp_path / "nope.yaml")), "config file not found")


def test_unknown_key_is_named(tmp_path, cifar_zip):
    raw = tiny_cifar_raw(cifar_zip, tmp_path)
    raw["trainer"]["epochz"] = 3
    assert_one_line_error(auxray("train", str(write_config(tmp_path, raw))), "trainer.epochz", "unknown key")


def test_invalid_value_and_bad_override(tmp_path, cifar_zip):
    path = write_config(tmp_path, tiny_cifar_raw(cifar_zip, tmp_path))
    assert_one_line_error(auxray("train", str(path), "--set", "trainer.lr=-1"), "trainer.lr")
    assert_one_line_error(auxray("train", str(path), "--set", "method.name=bogus"), "method.name")
    assert_one_line_error(auxray("train", str(path), "--set", "nonsense"), "key=value")


def test_missing_data_path_writes_nothing(tmp_path, cifar_zip):
    raw = tiny_cifar_raw(cifar_zip, tmp_path)
    raw["data"]["root"] = str(tmp_path / "no-such-data.zip")
    proc = auxray("train", str(write_config(tmp_path, raw)))
    assert_one_line_error(proc, "no-such-data.zip")


def test_malformed_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: [unclosed\n")
    assert_one_line_error(auxray("train", str(path)), "not valid YAML")


def test_resume_without_checkpoint(tmp_path, cifar_zip):
    path = write_config(tmp_path, tiny_cifar_raw(cifar_zip, tmp_path))
    assert_one_line_error(auxray("train", str(path), "--resume"), "nothing to resume")


def test_train_json_and_resume(tmp_path, cifar_zip):
    raw = tiny_cifar_raw(cifar_zip, tmp_path, name="auxilearn_combine", aux_task="rotation")
    path = write_config(tmp_path, raw)
    proc = auxray("train", str(path), "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["method"] == "auxilearn_combine"
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert result["seconds"] > 0
    run_dir = Path(result["run_dir"])
    assert (run_dir / "latest.pt").is_file() and (run_dir / "best.pt").is_file()
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    # Resuming a finished run trains nothing more and reports the same test accuracy.
    again = auxray("train", str(path), "--json", "--resume", "--no-progress")
    assert again.returncode == 0, again.stderr
    resumed = json.loads(again.stdout.strip().splitlines()[-1])
    assert resumed["run_dir"] == result["run_dir"]
    assert resumed["test_accuracy"] == result["test_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("config", CIFAR_5PCT, ids=[p.stem for p in CIFAR_5PCT])
def test_every_cifar10_5pct_config_runs_one_epoch(config, tmp_path):
    proc = auxray("train", str(config), "--json", "--no-progress", "--set", "trainer.epochs=1",
                  "--set", f"trainer.checkpoint_dir={tmp_path}", "--set", f"data.cache_dir={CACHE_DIR}",
                  "--set", "data.test_limit=1000", "--set", "tracking.enabled=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["method"] == config.stem
    assert 0.0 <= result["test_accuracy"] <= 1.0
