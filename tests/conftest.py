"""Shared fixtures: repository paths, the real CIFAR-10 zip, and a tiny CIFAR run config."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR_ZIP = (REPO.parent / "shared" / "data" / "cifar10-images.zip").resolve()
CACHE_DIR = REPO / ".auxray_cache"

# No Ray settings here: the tests run Ray as a user's environment does (token auth on for a new local instance,
# Ray's uv-run hook unless auxray switches it off itself). The cluster tests pin RAY_AUTH_MODE in their `ray`
# commands, as the README's cluster block does.

# Settings a user's shell may carry that change where auxray reads, writes or connects (auxray.paths, auxray.config,
# auxray.tracking.uri, auxray.train.ray_cluster). Every test starts without them; a test about one sets it itself.
USER_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "RAY_ADDRESS",
    "RAY_JOB_CONFIG_JSON_ENV_VAR",
    "AUXRAY_STORAGE",
    "AUXRAY_DATA",
    "AUXRAY_CLUSTER_DIR",
)
for _key in USER_ENV:  # also before collection: test modules may read them at import
    os.environ.pop(_key, None)


@pytest.fixture(autouse=True)
def isolated_from_user_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear the user's auxray, Ray and MLflow settings for every test, so a test that sets none of them runs the
    same on a developer's shell, in CI and inside a Ray job."""
    for key in USER_ENV:
        monkeypatch.delenv(key, raising=False)


def chromium() -> str:
    """The headless Chromium on PATH (Debian's `chromium`); a missing browser fails the test that needs it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium not on PATH (apt-get install -y chromium; tests/run.sh installs it)"
    return found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` (the CUDA paths) skip on a machine without CUDA and run, able to fail, where it has one."""
    if torch.cuda.is_available():
        return
    no_cuda = pytest.mark.skip(reason="gpu test: this machine has no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_cuda)


@pytest.fixture(scope="session")
def cifar_zip() -> Path:
    """The real CIFAR-10 ImageFolder zip beside the repository (a missing file fails, never skips)."""
    assert CIFAR_ZIP.is_file(), f"CIFAR-10 zip not found at {CIFAR_ZIP}"
    return CIFAR_ZIP


def tiny_cifar_raw(cifar_zip: Path, tmp_path: Path, **method: object) -> dict:
    """A raw config for a seconds-long real-CIFAR run: 20 labelled images per class, a narrow ConvNet."""
    return {
        "data": {
            "dataset": "cifar10",
            "root": str(cifar_zip),
            "cache_dir": str(CACHE_DIR),
            "labeled_per_class": 20,
            "labeled_fraction": None,
            "outer_fraction": 0.2,
            "val_fraction": 0.2,
            "test_limit": 200,
            "seed": 0,
        },
        "model": {"backbone": "convnet4", "width": 8},
        "method": {"name": "stl", **method},
        "trainer": {
            "epochs": 2,
            "batch_size": 16,
            "lr": 0.05,
            "seed": 0,
            "checkpoint_dir": str(tmp_path / "runs"),
            "threads": 2,
            "device": "cpu",
        },
        "hypergrad": {"method": "neumann", "steps": 2, "alpha": 0.01, "every": 2},
        "tracking": {"enabled": False},
    }
