"""AuxiLearn loss combiners h = g(l; phi) over per-sample task losses.

Every combiner takes the full loss vector ``[B, 1 + n_aux]`` (column 0 = main loss) and returns only
the auxiliary part ``[B]``; it never reads column 0, so callers add the main loss unweighted:
``L_T = mean(l_main + g(l))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _inv_softplus(y: float) -> float:
    """x with softplus(x) == y (y > 0)."""
    return y + math.log(-math.expm1(-y))


class _Combiner(nn.Module):
    """Shared input checking and the effective task weights used for logging."""

    n_aux: int

    def _check(self, losses: Tensor) -> None:
        if losses.dim() != 2 or losses.shape[1] != 1 + self.n_aux:
            raise ValueError(f"expected losses [B, 1+n_aux] with n_aux={self.n_aux}, got {tuple(losses.shape)}")

    def task_weights(self, losses: Tensor) -> Tensor:
        """Effective weight of each aux task, ``[n_aux]``: the batch mean of d g / d (aux loss column)."""
        with torch.enable_grad():
            inp = losses.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self(inp).sum(), inp)
        return grad[:, 1:].mean(dim=0).detach()


class LinearCombiner(_Combiner):
    """g(l) = sum_k w_k * l_k over the aux columns. With ``monotone`` the weights are
    ``softplus(raw) > 0``; otherwise ``w = raw`` (any sign). Weights start at ``init_weight``.

    ``normalised``: ``w = K * softmax(raw)`` instead, positive and summing to the number of tasks K (as ARML's
    and AuxiNash's), 1 each at the start; a step on one task's weight then moves the others the other way.
    """

    def __init__(self, n_aux: int, monotone: bool = True, init_weight: float = 1.0, normalised: bool = False) -> None:
        super().__init__()
        self.n_aux, self.monotone, self.normalised = n_aux, monotone, normalised
        start = 0.0 if normalised else _inv_softplus(init_weight) if monotone else init_weight
        self.raw = nn.Parameter(torch.full((n_aux,), float(start)))

    @property
    def weights(self) -> Tensor:
        """The effective per-task weights ``[n_aux]``."""
        if self.normalised:
            return self.n_aux * torch.softmax(self.raw, dim=0)
        return F.softplus(self.raw) if self.monotone else self.raw

    def forward(self, losses: Tensor) -> Tensor:
        self._check(losses)
        return losses[:, 1:] @ self.weights

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        """The weights themselves (equal to the derivative form; ``losses`` is not needed)."""
        return self.weights.detach()


class _PositiveLinear(nn.Module):
    """Linear layer with weights ``softplus(raw) >= 0``, so it is monotone non-decreasing in every input;
    initialised near ``1 / in_features`` (an average of the inputs)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        base = _inv_softplus(1.0 / in_features)
        self.raw = nn.Parameter(base + 0.1 * torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, F.softplus(self.raw), self.bias)


class NonlinearCombiner(_Combiner):
    """A small MLP over the aux losses ``[B, n_aux] -> [B]`` with a softplus output (always >= 0).

    Hidden layers use ReLU. With ``monotone`` every layer has non-negative weights and the
    activations are monotone, so g is non-decreasing in each aux loss (no task gets a negative weight).
    """

    def __init__(self, n_aux: int, hidden: list[int] | None = None, monotone: bool = False) -> None:
        super().__init__()
        self.n_aux, self.monotone = n_aux, monotone
        sizes = [n_aux, *(hidden if hidden is not None else [10]), 1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(_PositiveLinear(a, b) if monotone else nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, losses: Tensor) -> Tensor:
        self._check(losses)
        return F.softplus(self.net(losses[:, 1:])).squeeze(1)
