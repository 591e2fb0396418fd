"""A run whose loss stops being a number has diverged: it stops with one line naming the step and the losses, rather
than training on to a chance-level model that a table would read as a result."""

from __future__ import annotations

import math
from collections.abc import Mapping

from auxray.errors import UserError


class TrainingDiverged(UserError):
    """An inner step's loss is NaN or infinite; the checkpoints written before it are kept."""


def check_finite(stats: Mapping[str, float], epoch: int, step: int) -> None:
    """Raise TrainingDiverged when any loss of an inner step's stats is not finite."""
    bad = [f"{k} {v}" for k, v in stats.items() if "loss" in k and not math.isfinite(v)]
    if bad:
        raise TrainingDiverged(
            f"training diverged at epoch {epoch}, step {step} ({', '.join(bad)}); the checkpoints before it are kept: "
            "lower trainer.lr or the outer learning rate, or check the auxiliary tasks' targets"
        )
