"""Uncertainty weighting (Kendall, Gal and Cipolla, 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class UncertaintyWeighting(nn.Module):
    """``sum_t exp(-s_t) * L_t + s_t`` with learned log-variances ``s_t = log sigma_t^2``.

    This is Kendall et al.'s classification form in the common simplification (regulariser ``s_t``
    rather than ``s_t / 2``, no 1/2 on the loss), used for all tasks. For fixed ``L_t > 0`` the
    minimiser is ``s_t = log L_t``. ``s`` starts at 0 (all weights 1) and trains with the primary net.
    """

    def __init__(self, n_tasks: int) -> None:
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(n_tasks))

    def forward(self, task_losses: Tensor) -> Tensor:
        """Scalar weighted loss from the per-task mean losses ``[n_tasks]``."""
        if task_losses.shape != self.log_vars.shape:
            raise ValueError(f"expected {tuple(self.log_vars.shape)} task losses, got {tuple(task_losses.shape)}")
        return (torch.exp(-self.log_vars) * task_losses + self.log_vars).sum()

    def task_weights(self) -> Tensor:
        """Current task weights ``exp(-s)``, ``[n_tasks]``."""
        return torch.exp(-self.log_vars).detach()
