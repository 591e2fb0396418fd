"""Checkpoint files: atomic writes and RNG capture, so an interrupted run resumes bit for bit."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest.pt"
BEST = "best.pt"


def rng_state() -> dict[str, Any]:
    """Every global RNG the loop may touch."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (temp file then rename): a crash mid-write never leaves a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint onto the CPU."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def latest_in(directory: str | Path | None) -> Path | None:
    """The latest checkpoint in a run directory, if one exists."""
    if directory is None:
        return None
    p = Path(directory) / LATEST
    return p if p.is_file() else None
