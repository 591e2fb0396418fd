"""One-step unrolled hypergradient (MAXL; DARTS second order)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

from auxray.hypergrad.vectors import Vec, fill_zeros, leaves


def unrolled_hypergrad(
    inner_fn: Callable[[Vec, Vec], Tensor],
    outer_fn: Callable[[Vec], Tensor],
    params: Iterable[Tensor],
    hparams: Iterable[Tensor],
    *,
    lr: float,
) -> tuple[Tensor, ...]:
    """d/dphi outer_fn(W - lr * dL_T/dW(W, phi)), by autograd through the one SGD step."""
    w, phi = leaves(params), leaves(hparams)
    with torch.enable_grad():
        grads = torch.autograd.grad(inner_fn(w, phi), w, create_graph=True, allow_unused=True)
        stepped = tuple(p if g is None else p - lr * g for p, g in zip(w, grads))
        res = torch.autograd.grad(outer_fn(stepped), phi, allow_unused=True)
    return tuple(g.detach() for g in fill_zeros(res, phi))
