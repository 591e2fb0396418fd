"""Implicit-function-theorem hypergradient dL_A/dphi = - M^T H^{-1} v (+ an optional direct term).

One implementation, :func:`implicit_from_graph`; :func:`implicit_hypergrad` (from loss tensors) and
:func:`functional_implicit_hypergrad` (from pure functions of W and phi) only build its inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from auxray.hypergrad.hvp import damped, fwdrev_hvp, gradient_graph, reduced, revrev_hvp, select_hvp
from auxray.hypergrad.solvers import Solver, solver_for
from auxray.hypergrad.vectors import HVP, Reduce, Vec, fill_zeros, leaves


def outer_gradient(outer_loss: Tensor, params: Vec, reduce: Reduce | None = None) -> Vec:
    """v = dL_A/dW, zeros where L_A does not reach, reduced when a hook is given."""
    grads: tuple[Tensor | None, ...]
    if outer_loss.requires_grad:
        grads = torch.autograd.grad(outer_loss, params, retain_graph=True, allow_unused=True)
    else:
        grads = (None,) * len(params)
    v = tuple(g.detach() for g in fill_zeros(grads, params))
    return tuple(reduce(v)) if reduce is not None else v


def mixed_term(
    grads: Vec, hparams: Vec, u: Vec, reduce: Reduce | None = None, direct: Tensor | None = None
) -> tuple[Tensor, ...]:
    """-M^T u = -d/dphi (dL_T/dW . u), plus d(direct)/dphi when a scalar ``direct`` term is given (in the same
    backward pass); zeros for hparams not reached, reduced when a hook is given."""
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    outputs = [grads[i] for i in live]
    grad_outputs = [-u[i] for i in live]
    if direct is not None and direct.requires_grad:
        outputs.append(direct)
        grad_outputs.append(torch.ones_like(direct))
    res: tuple[Tensor | None, ...]
    if outputs and hparams:
        res = torch.autograd.grad(outputs, hparams, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True)
    else:
        res = (None,) * len(hparams)
    mixed = tuple(g.detach() for g in fill_zeros(res, hparams))
    return tuple(reduce(mixed)) if reduce is not None else mixed


def implicit_hypergrad(
    inner_loss: Tensor,
    outer_loss: Tensor,
    params: Iterable[Tensor],
    hparams: Iterable[Tensor],
    *,
    method: str | Solver = "neumann",
    steps: int = 3,
    alpha: float = 1e-2,
    tol: float = 1e-6,
    damping: float = 0.0,
    reduce: Reduce | None = None,
    reduce_hvp: bool = True,
) -> tuple[Tensor, ...]:
    """dL_A/dphi = -M^T (H + damping I)^{-1} v from the graphs of L_T and L_A (reverse-over-reverse HVPs).

    ``method`` is a solver (``neumann_solver(...)``, ``cg_solver(...)``, ``exact_solver()`` or any
    ``(hvp, v) -> u``) or its name, ``"neumann"``, ``"cg"`` or ``"exact"``, set by ``steps`` (the Neumann depth K,
    or CG's iteration cap, at least 1), ``alpha`` and ``tol`` (CG stops once ||r|| <= tol * ||v||). ``reduce`` is
    applied to v, to every H-vector product when ``reduce_hvp``, and to the result. Neumann includes the factor
    alpha (AuxiLearn's reference code drops it: its result is ours / alpha).
    """
    params, hparams = tuple(params), tuple(hparams)
    grads = gradient_graph(inner_loss, params)
    v = outer_gradient(outer_loss, params, reduce)
    return implicit_from_graph(
        grads,
        v,
        params,
        hparams,
        method=method,
        steps=steps,
        alpha=alpha,
        tol=tol,
        damping=damping,
        reduce=reduce,
        reduce_hvp=reduce_hvp,
    )


def implicit_from_graph(
    grads: Vec | Callable[[], Vec],
    v: Vec,
    params: Vec,
    hparams: Vec,
    *,
    method: str | Solver = "neumann",
    steps: int = 3,
    alpha: float = 1e-2,
    tol: float = 1e-6,
    damping: float = 0.0,
    reduce: Reduce | None = None,
    reduce_hvp: bool = True,
    hvp_wrap: Callable[[HVP], HVP] | None = None,
    direct: Tensor | None = None,
    product: HVP | None = None,
) -> tuple[Tensor, ...]:
    """-M^T (H + damping I)^{-1} v from a gradient graph dL_T/dW (built with create_graph) and v = dL_A/dW.

    The core of every implicit hypergradient here: a caller that already holds the training loss's gradient
    graph (the inner step's own backward, kept for the outer step) pays for no second forward or backward.
    ``method``, ``steps``, ``alpha``, ``tol``: the solver, as in :func:`implicit_hypergrad`.
    ``hvp_wrap`` lets a caller observe each H-vector product (timing); it must return an equivalent HVP.
    ``direct``: a scalar term of the outer objective on phi alone whose gradient is added (one backward pass).
    ``product``: H-vector products taken another way (e.g. forward-over-reverse) instead of differentiating
    ``grads`` again; ``grads`` may then be a function that builds the graph, called only after the solve, so no
    double-backward graph stays alive during the series.
    """
    build: Callable[[], Vec] = grads if callable(grads) else (lambda: grads)
    graph = None
    if product is None:
        graph = build()
        product = revrev_hvp(graph, params)
    if hvp_wrap is not None:
        product = hvp_wrap(product)
    hvp = damped(reduced(product, reduce if reduce_hvp else None), damping)
    u = solver_for(method, steps=steps, alpha=alpha, tol=tol)(hvp, v)
    return mixed_term(build() if graph is None else graph, hparams, u, reduce, direct)


def functional_implicit_hypergrad(
    inner_fn: Callable[[Vec, Vec], Tensor],
    outer_fn: Callable[[Vec], Tensor],
    params: Iterable[Tensor],
    hparams: Iterable[Tensor],
    *,
    method: str | Solver = "neumann",
    steps: int = 3,
    alpha: float = 1e-2,
    tol: float = 1e-6,
    damping: float = 0.0,
    hvp: str = "revrev",
    reduce: Reduce | None = None,
    reduce_hvp: bool = True,
) -> tuple[Tensor, ...]:
    """Same as :func:`implicit_hypergrad` for pure ``inner_fn(W, phi)`` and ``outer_fn(W)``.

    ``hvp="fwdrev"`` takes H-vector products by ``torch.func`` forward-over-reverse and builds the
    double-backward graph only once, for the final mixed term; ``"auto"`` see ``select_hvp``.
    """
    mode = select_hvp(hvp)
    w, phi = leaves(params), leaves(hparams)
    with torch.enable_grad():
        v = outer_gradient(outer_fn(w), w, reduce)
        product = fwdrev_hvp(inner_fn, w, phi) if mode == "fwdrev" else None
        return implicit_from_graph(
            lambda: gradient_graph(inner_fn(w, phi), w),
            v,
            w,
            phi,
            method=method,
            steps=steps,
            alpha=alpha,
            tol=tol,
            damping=damping,
            reduce=reduce,
            reduce_hvp=reduce_hvp,
            product=product,
        )
