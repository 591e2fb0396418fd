"""Uncertainty weighting (Kendall, Gal and Cipolla, 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

LOSS_FLOOR = 0.1  # the smallest loss scale a task is weighed for: its weight stays at most 1 / LOSS_FLOOR


class UncertaintyWeighting(nn.Module):
    """``sum_t exp(-s_t) * (L_t + LOSS_FLOOR) + s_t`` with learned log-variances ``s_t = log sigma_t^2``.

    This is Kendall et al.'s classification form in the common simplification (regulariser ``s_t``
    rather than ``s_t / 2``, no 1/2 on the loss), used for all tasks. For fixed ``L_t`` the minimiser is
    ``s_t = log(L_t + LOSS_FLOOR)``. Without the floor a task whose loss is 0 on every batch for a while
    (pseudo-labels before any prediction is confident) drives ``s_t`` down without bound, and its weight
    overflows as soon as its loss turns positive. The floor adds a constant to the loss, so W's gradient is
    Kendall's. ``s`` starts at 0 (all weights 1) and trains with the primary net.
    """

    def __init__(self, n_tasks: int) -> None:
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(n_tasks))

    def forward(self, task_losses: Tensor) -> Tensor:
        """Scalar weighted loss from the per-task mean losses ``[n_tasks]``."""
        if task_losses.shape != self.log_vars.shape:
            raise ValueError(f"expected {tuple(self.log_vars.shape)} task losses, got {tuple(task_losses.shape)}")
        return (torch.exp(-self.log_vars) * (task_losses + LOSS_FLOOR) + self.log_vars).sum()

    def task_weights(self) -> Tensor:
        """Current task weights ``exp(-s)``, ``[n_tasks]``."""
        return torch.exp(-self.log_vars).detach()
