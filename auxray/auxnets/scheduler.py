"""JTDS task-data scheduler: a learned weight per sample and per auxiliary task."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAPER_START = 0.125  # every weight at the start of JTDS as published: three sigmoids at 0


class TaskDataScheduler(nn.Module):
    """``w_ij = s * sigmoid(alpha_j) * sigmoid(P_j . c_i) * sigmoid(a_j * l_ij + b_j)``.

    Task importance ``alpha_j``, similarity of the L2-normalised sample features ``c_i`` to a per-task
    prototype ``P_j``, and a loss-based noise filter (``a_j < 0`` down-weights high-loss samples).
    ``n_aux * (d + 3)`` parameters. Starts with ``alpha = a = b = 0`` and small random prototypes, so every
    weight is close to ``init_weight`` (the scale ``s = init_weight / (1/8)``; unset: JTDS's own 1/8).

    ``normalised``: the task importance is ``K * softmax(alpha)`` (summing to the number of tasks K, as the
    normalised combiner's) and the two per-sample factors ``2 * sigmoid``, so every weight starts near 1 and a
    task's mean weight can rise only as another's falls.
    """

    def __init__(self, feat_dim: int, n_aux: int, init_weight: float | None = None, normalised: bool = False) -> None:
        super().__init__()
        if normalised and init_weight not in (None, 1.0):
            raise ValueError("normalised JTDS weights start at 1 (their importances sum to the number of tasks)")
        self.feat_dim, self.n_aux, self.normalised = feat_dim, n_aux, normalised
        self.scale = 4.0 if normalised else (init_weight or PAPER_START) / PAPER_START
        self.alpha = nn.Parameter(torch.zeros(n_aux))
        self.prototypes = nn.Parameter(0.01 * torch.randn(n_aux, feat_dim))
        self.a = nn.Parameter(torch.zeros(n_aux))
        self.b = nn.Parameter(torch.zeros(n_aux))

    def importance(self) -> Tensor:
        """The task-level factor ``[n_aux]``: ``sigmoid(alpha)``, or ``K * softmax(alpha)`` when normalised."""
        return self.n_aux * torch.softmax(self.alpha, dim=0) if self.normalised else torch.sigmoid(self.alpha)

    def forward(self, features: Tensor, losses: Tensor) -> Tensor:
        """Weights ``[B, n_aux]`` from features ``[B, d]`` and per-sample aux losses ``[B, n_aux]``."""
        if features.shape[1] != self.feat_dim or losses.shape[1] != self.n_aux:
            raise ValueError(
                f"expected features [B, {self.feat_dim}] and losses [B, {self.n_aux}], "
                f"got {tuple(features.shape)} and {tuple(losses.shape)}"
            )
        c = F.normalize(features.flatten(1), dim=1)
        similarity = torch.sigmoid(c @ self.prototypes.T)
        noise = torch.sigmoid(self.a * losses + self.b)
        return self.scale * self.importance() * similarity * noise

    def task_weights(self, features: Tensor, losses: Tensor) -> Tensor:
        """Mean weight per task over the batch, ``[n_aux]`` (for logging)."""
        with torch.no_grad():
            return self(features, losses).mean(dim=0)
