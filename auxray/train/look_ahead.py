"""The inner optimizer's step direction for a look-ahead hypergradient (Auto-lambda's virtual step): read from the
optimizer's own state at the moment of the outer step, so the virtual step is the one the real step will take."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from auxray.hypergrad.vectors import Vec
from auxray.hypergrad.weighting import sgd_direction
from auxray.train.hyperstep import Direction


def sgd_look_ahead(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> Direction:
    """gradients of ``params`` -> the direction SGD (momentum, weight decay, Nesterov as configured; one param
    group, dampening 0) steps them along now: W' = W - lr * direction."""
    if not isinstance(optimizer, torch.optim.SGD) or len(optimizer.param_groups) != 1:
        raise ValueError("a look-ahead along the inner optimizer's step needs one SGD param group")
    group = optimizer.param_groups[0]
    if group["dampening"]:
        raise ValueError("a look-ahead along the inner SGD step assumes dampening 0")
    chosen = tuple(params)

    def direction(grads: Vec) -> Vec:
        buffers = [optimizer.state.get(p, {}).get("momentum_buffer") for p in chosen]
        return sgd_direction(grads, chosen, buffers, group["momentum"], group["weight_decay"], group["nesterov"])

    return direction
