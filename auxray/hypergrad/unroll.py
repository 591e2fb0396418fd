"""One-step unrolled hypergradient (MAXL; DARTS second order)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

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
        return unrolled_from_graph(grads, outer_fn, w, phi, lr=lr)


def unrolled_from_graph(
    grads: Sequence[Tensor | None],
    outer_fn: Callable[[Vec], Tensor],
    params: Vec,
    hparams: Vec,
    *,
    lr: float,
    direct: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """The unrolled hypergradient from a gradient graph dL_T/dW (create_graph) the caller already holds:
    the inner step's own backward serves the look-ahead, so no second pass over the training batch.
    ``direct``: a scalar term on phi alone whose gradient is added, in the same backward pass."""
    with torch.enable_grad():
        stepped = tuple(p if g is None else p - lr * g for p, g in zip(params, grads))
        target = outer_fn(stepped) if direct is None else outer_fn(stepped) + direct
        res = torch.autograd.grad(target, hparams, allow_unused=True)
    return tuple(g.detach() for g in fill_zeros(res, hparams))
