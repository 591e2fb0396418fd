"""JTDS task-data scheduler: a learned weight per sample and per auxiliary task."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TaskDataScheduler(nn.Module):
    """``w_ij = sigmoid(alpha_j) * sigmoid(P_j . c_i) * sigmoid(a_j * l_ij + b_j)``.

    Task importance ``alpha_j``, similarity of the L2-normalised sample features ``c_i`` to a per-task
    prototype ``P_j``, and a loss-based noise filter (``a_j < 0`` down-weights high-loss samples).
    ``n_aux * (d + 3)`` parameters. Starts with ``alpha = a = b = 0`` and small random prototypes, so
    every weight is close to 1/8; weights always lie in (0, 1).
    """

    def __init__(self, feat_dim: int, n_aux: int) -> None:
        super().__init__()
        self.feat_dim, self.n_aux = feat_dim, n_aux
        self.alpha = nn.Parameter(torch.zeros(n_aux))
        self.prototypes = nn.Parameter(0.01 * torch.randn(n_aux, feat_dim))
        self.a = nn.Parameter(torch.zeros(n_aux))
        self.b = nn.Parameter(torch.zeros(n_aux))

    def forward(self, features: Tensor, losses: Tensor) -> Tensor:
        """Weights ``[B, n_aux]`` from features ``[B, d]`` and per-sample aux losses ``[B, n_aux]``."""
        if features.shape[1] != self.feat_dim or losses.shape[1] != self.n_aux:
            raise ValueError(
                f"expected features [B, {self.feat_dim}] and losses [B, {self.n_aux}], "
                f"got {tuple(features.shape)} and {tuple(losses.shape)}"
            )
        c = F.normalize(features.flatten(1), dim=1)
        importance = torch.sigmoid(self.alpha)
        similarity = torch.sigmoid(c @ self.prototypes.T)
        noise = torch.sigmoid(self.a * losses + self.b)
        return importance * similarity * noise

    def task_weights(self, features: Tensor, losses: Tensor) -> Tensor:
        """Mean weight per task over the batch, ``[n_aux]`` (for logging)."""
        with torch.no_grad():
            return self(features, losses).mean(dim=0)
