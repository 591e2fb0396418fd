"""First-order finite-difference approximation of the unrolled hypergradient (DARTS, Auto-Lambda)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from auxray.hypergrad.vectors import Reduce, Vec, axpy, dot, fill_zeros, leaves


def _grad(fn: Callable[[], Tensor], wrt: Vec) -> Vec:
    """Detached gradient of ``fn()`` with respect to ``wrt`` (zeros where unreached)."""
    with torch.enable_grad():
        res = torch.autograd.grad(fn(), wrt, allow_unused=True)
    return tuple(g.detach() for g in fill_zeros(res, wrt))


def finite_difference_hypergrad(
    inner_fn: Callable[[Vec, Vec], Tensor],
    outer_fn: Callable[[Vec], Tensor],
    params: Iterable[Tensor],
    hparams: Iterable[Tensor],
    *,
    lr: float,
    eps: float = 0.01,
    reduce: Reduce | None = None,
) -> tuple[Tensor, ...]:
    """-lr * (dL_T/dphi(W + e d) - dL_T/dphi(W - e d)) / (2 e), approximating -lr * M^T d.

    W' = W - lr * dL_T/dW(W, phi), d = dL_A/dW at W' and e = eps / ||d|| (DARTS' scaling, so the
    probe moves W by exactly ``eps`` in norm); zeros when d = 0. Matches the unrolled
    hypergradient to first order in lr. With ``reduce`` (data-parallel workers) the step's gradient and d are
    all-reduced, so every worker probes the same W' and direction as one process over all the batches would (the
    result is each worker's own part: the caller reduces it).
    """
    w, hparams = tuple(p.detach() for p in params), tuple(hparams)
    w_leaf, phi_fixed = leaves(w), tuple(h.detach() for h in hparams)
    g = _grad(lambda: inner_fn(w_leaf, phi_fixed), w_leaf)
    g = tuple(reduce(g)) if reduce is not None else g
    return finite_difference_from_grad(g, inner_fn, outer_fn, w, hparams, lr=lr, eps=eps, reduce=reduce)


def finite_difference_from_grad(
    g: Vec,
    inner_fn: Callable[[Vec, Vec], Tensor],
    outer_fn: Callable[[Vec], Tensor],
    params: Iterable[Tensor],
    hparams: Iterable[Tensor],
    *,
    lr: float,
    eps: float = 0.01,
    reduce: Reduce | None = None,
) -> tuple[Tensor, ...]:
    """:func:`finite_difference_hypergrad` given the step's direction g at (W, phi) (the inner step's own gradient,
    or the inner optimizer's direction), as every worker holds it; ``reduce`` all-reduces d."""
    w = tuple(p.detach() for p in params)
    phi = leaves(hparams)
    g = tuple(x.detach() for x in g)
    stepped = leaves(axpy(-lr, g, w))
    d = _grad(lambda: outer_fn(stepped), stepped)
    d = tuple(reduce(d)) if reduce is not None else d
    norm = dot(d, d).sqrt()
    if norm.item() == 0.0:
        return tuple(torch.zeros_like(h) for h in phi)
    e = eps / norm
    plus = _grad(lambda: inner_fn(axpy(e, d, w), phi), phi)
    minus = _grad(lambda: inner_fn(axpy(-e, d, w), phi), phi)
    return tuple(-lr * (a - b) / (2 * e) for a, b in zip(plus, minus))
