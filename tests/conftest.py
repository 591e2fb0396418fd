"""Shared fixtures: repository paths, the real CIFAR-10 zip, and a tiny CIFAR run config."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR_ZIP = (REPO.parent / "shared" / "data" / "cifar10-images.zip").resolve()
CACHE_DIR = REPO / ".auxray_cache"

# No Ray settings here: the tests run Ray as a user's environment does (token auth on for a new local instance,
# Ray's uv-run hook unless auxray switches it off itself). The cluster tests pin RAY_AUTH_MODE in their `ray`
# commands, as the README's cluster block does.


@pytest.fixture(scope="session")
def cifar_zip() -> Path:
    """The real CIFAR-10 ImageFolder zip beside the repository (a missing file fails, never skips)."""
    assert CIFAR_ZIP.is_file(), f"CIFAR-10 zip not found at {CIFAR_ZIP}"
    return CIFAR_ZIP


def tiny_cifar_raw(cifar_zip: Path, tmp_path: Path, **method: object) -> dict:
    """A raw config for a seconds-long real-CIFAR run: 20 labelled images per class, a narrow ConvNet."""
    return {
        "data": {"dataset": "cifar10", "root": str(cifar_zip), "cache_dir": str(CACHE_DIR),
                 "labeled_per_class": 20, "labeled_fraction": None, "aux_fraction": 0.2, "val_fraction": 0.2,
                 "test_limit": 200, "seed": 0},
        "model": {"backbone": "convnet4", "width": 8},
        "method": {"name": "stl", **method},
        "trainer": {"epochs": 2, "batch_size": 16, "lr": 0.05, "seed": 0, "checkpoint_dir": str(tmp_path / "runs"),
                    "threads": 2},
        "hypergrad": {"method": "neumann", "steps": 2, "alpha": 0.01, "every": 2},
        "tracking": {"enabled": False},
    }
