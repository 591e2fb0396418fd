"""Task weights that a gradient rule sets itself (ARML's projected step), not an optimizer: buffers, so that
nothing trains them by autograd, and the checkpoint holds them with the aux net, with the count of inner steps
that times the rule's updates (a resumed run updates on the same steps as an uninterrupted one)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RuleWeights(nn.Module):
    """g(l) = sum_k w_k * l_k over the aux columns of ``[B, 1 + n_aux]`` losses, like the linear combiner, with
    w a buffer (initially ``init_weight`` each) and ``steps`` the inner steps taken so far."""

    weights: Tensor
    steps: Tensor

    def __init__(self, n_aux: int, init_weight: float = 1.0) -> None:
        super().__init__()
        self.n_aux = n_aux
        self.register_buffer("weights", torch.full((n_aux,), float(init_weight)))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, losses: Tensor) -> Tensor:
        if losses.dim() != 2 or losses.shape[1] != 1 + self.n_aux:
            raise ValueError(f"expected losses [B, 1+n_aux] with n_aux={self.n_aux}, got {tuple(losses.shape)}")
        return losses[:, 1:] @ self.weights

    def task_weights(self) -> Tensor:
        """The current weights ``[n_aux]``."""
        return self.weights.detach().clone()
