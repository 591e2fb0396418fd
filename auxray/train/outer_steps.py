"""How the loop's hypergradients become phi steps: ``hypergrad.accumulate`` of them averaged into one step, at the
learning rate ``outer.lr`` states per step or per run (``outer.lr_per``).

The mean is taken after the all-reduce, so every data-parallel worker holds the same sum and calls the phi updater
(the coordinator) at the same steps with the same mean: 2 workers step phi as 1 process does. The sum of a group not
yet applied is part of the trainer's checkpoint, so a resumed run continues the group exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from auxray.config import RunConfig
from auxray.errors import UserError
from auxray.train.collective import PhiUpdater


def phi_steps(outer_batches: int, accumulate: int) -> int:
    """The phi steps of a run with ``outer_batches`` hypergradients averaged ``accumulate`` at a time."""
    return outer_batches // accumulate


def step_lr(lr: float, per: str, steps: int) -> float:
    """Each phi step's learning rate: lr itself (``per: step``), or the run's budget lr shared over its
    ``steps`` phi steps (``per: run``), so a run of any length moves phi about as far."""
    return lr if per == "step" else lr / steps


class OuterSteps:
    """Averages every ``accumulate`` hypergradients into one phi step at the run's per-step learning rate, and
    records the cosine between successive applied steps (their noise: near 1 when they agree)."""

    def __init__(self, cfg: RunConfig, phi: PhiUpdater, outer_batches: int) -> None:
        self.phi, self.accumulate = phi, cfg.hypergrad.accumulate
        outer = cfg.outer
        steps = phi_steps(outer_batches, self.accumulate)
        # A run shorter than hypergrad.every takes no outer step, as it always has; asking it to accumulate or to
        # share a budget over its phi steps is a mistake.
        if steps == 0 and (self.accumulate > 1 or outer.lr_per == "run"):
            raise UserError(
                f"hypergrad.accumulate: {self.accumulate} exceeds the run's {outer_batches} outer batches "
                "(epochs x steps per epoch / hypergrad.every), so phi would never move; lower it"
            )
        self.lr = step_lr(outer.lr, outer.lr_per, max(steps, 1))
        self.total: list[Tensor] | None = None
        self.count = 0
        self.previous: Tensor | None = None
        self.cosines: list[float] = []

    def add(self, grads: Sequence[Tensor], step: int) -> bool:
        """Add one outer batch's hypergradient; at the group's last, apply their mean to phi. True when phi stepped."""
        grads = [g.detach() for g in grads]
        self.total = grads if self.total is None else [t + g for t, g in zip(self.total, grads, strict=True)]
        self.count += 1
        if self.count < self.accumulate:
            return False
        mean = [t / self.accumulate for t in self.total] if self.accumulate > 1 else self.total
        self.total, self.count = None, 0
        flat = torch.cat([g.reshape(-1) for g in mean]).double()
        if self.previous is not None:
            self.cosines.append(float(torch.nn.functional.cosine_similarity(flat, self.previous, dim=0)))
        self.previous = flat
        return self.phi.apply(mean, step, lr=self.lr)

    def epoch_metrics(self) -> dict[str, float]:
        """The mean cosine between successive phi steps' hypergradients this epoch (none before two steps)."""
        cosines, self.cosines = self.cosines, []
        return {"hypergrad_successive_cosine": sum(cosines) / len(cosines)} if cosines else {}

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count, "previous": self.previous, "cosines": self.cosines}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.count = state["total"], state["count"]
        self.previous, self.cosines = state["previous"], list(state["cosines"])
