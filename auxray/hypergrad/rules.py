"""Hypergradient rules as values: how dL_A/dphi follows from the inner and outer losses at W, chosen once by
:func:`rule_for` (as :func:`auxray.hypergrad.solvers.solver_for` chooses a solver) and then only called. Implicit
(with its solver), one-step unrolled (MAXL) and finite differences (MAXL-F); each can take the inner step's gradient
graph or, where it has one, work on the pure functions alone."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from auxray.hypergrad.finite_difference import finite_difference_from_grad, finite_difference_hypergrad
from auxray.hypergrad.implicit import functional_implicit_hypergrad, implicit_from_graph, outer_gradient
from auxray.hypergrad.solvers import Solver, solver_for
from auxray.hypergrad.unroll import unrolled_from_graph
from auxray.hypergrad.vectors import HVP, Reduce, Vec, fill_zeros

InnerFn = Callable[[Vec, Vec], Tensor]  # L_T(W_sub, phi)
OuterFn = Callable[[Vec], Tensor]  # L_A(W_sub)


class Phases(Protocol):
    """Times named phases of an outer step: ``with phases("hvp"): ...``."""

    def __call__(self, name: str) -> AbstractContextManager[None]: ...


def no_phases(name: str) -> AbstractContextManager[None]:
    """The default: time nothing."""
    return nullcontext()


class Rule(Protocol):
    """How dL_A/dphi follows from the inner and outer losses at W (the direct term on phi included)."""

    @property
    def fuses(self) -> bool:
        """Whether it can take the gradient graph of an inner step's own backward (reverse-over-reverse)."""
        ...

    @property
    def differentiates_gradient(self) -> bool:
        """Whether the fused step builds dL_T/dW with create_graph for it (a plain gradient otherwise)."""
        ...

    @property
    def needs_graph(self) -> bool:
        """Whether the standalone step builds dL_T/dW's graph for it (else it works on the pure functions)."""
        ...

    @property
    def looks_ahead(self) -> bool:
        """Whether it takes a virtual inner step W - lr * grads (so ``grads`` may be an optimizer's direction)."""
        ...

    def from_gradient(
        self,
        grads: Vec,
        inner: InnerFn,
        outer: OuterFn,
        sub: Vec,
        phi: Vec,
        direct: Tensor | None,
        lr: float,
        reduce: Reduce | None,
        phases: Phases,
    ) -> Vec:
        """The hypergradient from dL_T/dW_sub (``grads``: a create_graph graph when ``differentiates_gradient``)
        and the scalar direct term on phi of the same inner pass; reduced across workers by ``reduce``."""
        ...

    def from_functions(
        self, inner: InnerFn, outer: OuterFn, sub: Vec, phi: Vec, direct: Vec | None, lr: float, reduce: Reduce | None
    ) -> Vec:
        """The hypergradient from the pure functions alone (no gradient graph at hand), plus the direct term's
        gradient ``direct`` already taken; for a rule whose ``needs_graph`` is false."""
        ...


def plus(a: Vec, b: Vec | None) -> Vec:
    """a + b elementwise (a when b is None)."""
    return a if b is None else tuple(x + y for x, y in zip(a, b))


def direct_gradient(direct: Tensor | None, phi: Vec) -> Vec | None:
    """d(direct)/dphi, zeros where unreached; None when the method has no direct term."""
    if direct is None or not direct.requires_grad:
        return None
    return tuple(
        g.detach() for g in fill_zeros(torch.autograd.grad(direct, phi, retain_graph=True, allow_unused=True), phi)
    )


def _reduced(vec: Vec, reduce: Reduce | None) -> Vec:
    """``vec`` all-reduced across workers (as it is on one process)."""
    return tuple(reduce(tuple(vec))) if reduce is not None else tuple(vec)


def _timed_hvp(phases: Phases) -> Callable[[HVP], HVP]:
    """Wraps an H-vector product so that each call is timed as the "hvp" phase."""

    def wrap(hvp: HVP) -> HVP:
        def timed(vec: Vec) -> Vec:
            with phases("hvp"):
                return hvp(vec)

        return timed

    return wrap


@dataclass(frozen=True)
class Implicit:
    """-M^T (H + damping I)^{-1} v by a linear solver; H-vector products over the gradient graph (reverse over
    reverse) or, with hvp fwdrev, forward-over-reverse on the pure functions."""

    solver: Solver
    damping: float
    hvp: str  # "revrev", "fwdrev" or "auto": how products are taken on the pure functions (select_hvp)
    reduce_hvp: bool  # all-reduce every product (hypergrad.mode: global), not only v and the result
    needs_graph: bool  # products over the gradient graph (reverse over reverse), not on the pure functions
    differentiates_gradient = True
    looks_ahead = False

    @property
    def fuses(self) -> bool:
        """Products over the graph can use the inner step's own; forward-over-reverse ones cannot."""
        return self.needs_graph

    def from_gradient(
        self,
        grads: Vec,
        inner: InnerFn,
        outer: OuterFn,
        sub: Vec,
        phi: Vec,
        direct: Tensor | None,
        lr: float,
        reduce: Reduce | None,
        phases: Phases,
    ) -> Vec:
        with phases("outer_gradient"):
            v = outer_gradient(outer(sub), sub, reduce)
        with phases("solve_and_mixed_term"):
            return implicit_from_graph(
                grads,
                v,
                sub,
                phi,
                method=self.solver,
                damping=self.damping,
                reduce=reduce,
                reduce_hvp=self.reduce_hvp,
                hvp_wrap=_timed_hvp(phases),
                direct=direct,
            )

    def from_functions(
        self, inner: InnerFn, outer: OuterFn, sub: Vec, phi: Vec, direct: Vec | None, lr: float, reduce: Reduce | None
    ) -> Vec:
        grads = functional_implicit_hypergrad(
            inner,
            outer,
            sub,
            phi,
            method=self.solver,
            damping=self.damping,
            hvp=self.hvp,
            reduce=reduce,
            reduce_hvp=self.reduce_hvp,
        )
        return plus(tuple(grads), _reduced(direct, reduce) if direct is not None else None)


@dataclass(frozen=True)
class Unrolled:
    """MAXL's one-step unroll: dL_A(W - lr dL_T/dW)/dphi, second order through the gradient graph."""

    differentiates_gradient = True
    needs_graph = True
    fuses = True
    looks_ahead = True

    def from_gradient(
        self,
        grads: Vec,
        inner: InnerFn,
        outer: OuterFn,
        sub: Vec,
        phi: Vec,
        direct: Tensor | None,
        lr: float,
        reduce: Reduce | None,
        phases: Phases,
    ) -> Vec:
        with phases("outer_gradient"):
            res = unrolled_from_graph(grads, outer, sub, phi, lr=lr, direct=direct)
        return _reduced(res, reduce)

    def from_functions(
        self, inner: InnerFn, outer: OuterFn, sub: Vec, phi: Vec, direct: Vec | None, lr: float, reduce: Reduce | None
    ) -> Vec:
        raise ValueError("the unrolled hypergradient differentiates the gradient graph; it has no functional form")


@dataclass(frozen=True)
class FiniteDifference:
    """MAXL-F's first-order unroll: the mixed second derivative by central differences of dL_T/dphi. Its
    ``from_gradient`` takes the step's direction as every worker holds it (all-reduced); d is all-reduced inside."""

    eps: float
    fuses: bool = True  # false with hypergrad.hvp fwdrev, as for the other rules
    differentiates_gradient = False
    needs_graph = False
    looks_ahead = True

    def from_gradient(
        self,
        grads: Vec,
        inner: InnerFn,
        outer: OuterFn,
        sub: Vec,
        phi: Vec,
        direct: Tensor | None,
        lr: float,
        reduce: Reduce | None,
        phases: Phases,
    ) -> Vec:
        with phases("outer_gradient"):
            res = plus(
                finite_difference_from_grad(grads, inner, outer, sub, phi, lr=lr, eps=self.eps, reduce=reduce),
                direct_gradient(direct, phi),
            )
        return _reduced(res, reduce)

    def from_functions(
        self, inner: InnerFn, outer: OuterFn, sub: Vec, phi: Vec, direct: Vec | None, lr: float, reduce: Reduce | None
    ) -> Vec:
        fd = finite_difference_hypergrad(inner, outer, sub, phi, lr=lr, eps=self.eps, reduce=reduce)
        return _reduced(plus(fd, direct), reduce)


def rule_for(
    method: str,
    *,
    steps: int = 3,
    alpha: float = 1e-2,
    tol: float = 1e-6,
    damping: float = 0.0,
    hvp: str = "revrev",
    reduce_hvp: bool = True,
    fd_eps: float = 1e-2,
) -> Rule:
    """The rule a config names (hypergrad.method) with the settings that apply to it: a solver name (``neumann``,
    ``cg``, ``exact``: implicit), ``unroll`` or ``fd``."""
    if method == "unroll":
        if hvp == "fwdrev":
            raise ValueError("hypergrad.hvp: fwdrev applies to implicit hypergradients; unroll takes no products")
        return Unrolled()
    if method == "fd":
        return FiniteDifference(fd_eps, fuses=hvp != "fwdrev")
    solver = solver_for(method, steps=steps, alpha=alpha, tol=tol)
    return Implicit(solver, damping, hvp, reduce_hvp, needs_graph=hvp != "fwdrev")
