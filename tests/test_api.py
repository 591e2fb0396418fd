"""The README's Python-API examples run as written and do what they print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from auxray.api import import_path_of, run_config
from tests.conftest import CACHE_DIR, REPO


def readme_python_block(heading: str, nth: int = 0) -> str:
    """The nth ```python block after a README heading, as written."""
    text = (REPO / "README.md").read_text()
    after = text[text.index(heading) :]
    blocks = re.findall(r"```python\n(.*?)\n```", after, flags=re.S)
    return blocks[nth]


def run_example(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a README example from the repository root, with its outputs (runs/, mlflow.db) in tmp_path and the
    decoded CIFAR-10 cache the tests share."""
    script = tmp_path / "example.py"
    script.write_text(code)
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    CACHE_DIR.mkdir(exist_ok=True)
    (xdg / "auxray").symlink_to(CACHE_DIR, target_is_directory=True)
    env = {**os.environ, "AUXRAY_STORAGE": str(tmp_path / "storage"), "XDG_CACHE_HOME": str(xdg)}
    for key in ("MLFLOW_TRACKING_URI", "AUXRAY_DATA"):
        env.pop(key, None)
    return subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_readme_fit_example_trains_a_user_trunk_and_task_and_tracks_it(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    proc = run_example(readme_python_block("## From Python"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"test accuracy (\S+), files in (\S+), MLflow run (\S+)", proc.stdout)
    assert match, proc.stdout
    run_dir, run_id = Path(match[2]), match[3]
    assert run_dir.parent == tmp_path / "storage" / "runs" / "my-trunk" and (run_dir / "best.pt").is_file()
    assert "task_weight/brightness" in (run_dir / "metrics.jsonl").read_text()
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'storage' / 'mlflow.db'}").get_run(run_id)
    assert run.info.status == "FINISHED"
    assert f"{run.data.metrics['test_accuracy']:.3f}" == match[1]  # the run's metric, as the example prints it
    assert run.data.params["model.backbone"] == "__main__:small_trunk"
    assert run.data.params["method.aux_task"] == "__main__:brightness"


def module_level_trunk(in_channels: int, width: int, in_features: int | None = None):
    raise AssertionError("only named, never called")


def test_callables_become_import_paths_and_locals_are_refused() -> None:
    cfg = run_config({"method": {"name": "stl"}, "hypergrad": {"params": "all"}}, backbone=module_level_trunk)
    assert cfg.model.backbone == "tests.test_api:module_level_trunk"
    assert import_path_of(module_level_trunk, "backbone") == cfg.model.backbone

    def local_trunk(in_channels: int, width: int, in_features: int | None = None):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="top level of a module"):
        run_config({}, backbone=local_trunk)


def test_readme_meta_optimizer_example_weights_the_helpful_auxiliary_above_the_harmful(tmp_path: Path) -> None:
    proc = run_example(readme_python_block("### A drop-in outer optimizer for your own loop"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"learned weights: helpful (\S+), harmful (\S+)", proc.stdout)
    assert match, proc.stdout
    helpful, harmful = float(match[1]), float(match[2])
    assert helpful > 1.0 > harmful, (helpful, harmful)  # both start at 1
    assert f"helpful {helpful:.2f}, harmful {harmful:.2f}" in (REPO / "README.md").read_text()
