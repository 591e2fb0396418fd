"""One outer step's hypergradient for any method: builds pure inner/outer functions over (W, phi)
with torch.func.functional_call and hands them to auxray.hypergrad.

Two ways in. ``compute_hypergrad`` differentiates at the current W on its own (the inner step has already
run). ``fused_hyperstep`` is an inner step and an outer step in one: the training batch's forward and
backward run once, that gradient updates W, and its graph serves the hypergradient, which saves one forward
and one backward over the training batch per outer step. Both honour the cost options of HypergradConfig:
``params`` (differentiate through a subset of W, the rest held fixed) and ``batch_size`` (fewer samples).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call

from auxray.config import HypergradConfig
from auxray.hypergrad import (
    batch_stats_only,
    finite_difference_from_grad,
    finite_difference_hypergrad,
    functional_implicit_hypergrad,
    implicit_from_graph,
    outer_gradient,
    unrolled_from_graph,
)
from auxray.hypergrad.vectors import HVP, Reduce, Vec, fill_zeros, leaves
from auxray.methods import Batch, InnerResult, Objective
from auxray.models import last_block_prefixes

IMPLICIT = ("neumann", "cg", "exact")


class Phases(Protocol):
    """Times named phases of an outer step: ``with phases("hvp"): ...``."""

    def __call__(self, name: str) -> AbstractContextManager[None]: ...


def no_phases(name: str) -> AbstractContextManager[None]:
    """The default: time nothing."""
    return nullcontext()


class PhaseTimer:
    """Accumulates wall seconds and call counts per phase (synchronising CUDA so GPU work is counted)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - t0
            self.counts[name] += 1

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def trainable(module: nn.Module) -> tuple[list[str], tuple[Tensor, ...]]:
    """Names and tensors of a module's trainable parameters."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return [n for n, _ in named], tuple(p for _, p in named)


def functional(module: nn.Module, names: list[str]) -> Callable[[tuple[Tensor, ...]], Callable[..., Any]]:
    """params -> a callable that runs `module` with those parameters in place of its own (its outputs are what
    the module returns: the caller knows whether that is the primary net's heads or the aux net's tensor)."""
    buffers = dict(module.named_buffers())

    def bind(params: tuple[Tensor, ...]) -> Callable[..., Any]:
        state = {**buffers, **dict(zip(names, params))}
        return lambda *args, **kwargs: functional_call(module, state, args, kwargs)

    return bind


def hypergrad_mask(names: list[str], params: str, backbone: str) -> list[bool]:
    """Which of the primary net's trainable parameters (by name) the hypergradient differentiates through."""
    if params == "all":
        return [True] * len(names)
    prefixes = ("heads.", *last_block_prefixes(backbone))
    return [n.startswith(prefixes) for n in names]


def first_rows(batch: Batch, n: int | None) -> Batch:
    """The first ``n`` samples of every tensor in a batch (all of them when ``n`` is None). A batch with
    unlabelled images holds the labelled rows first, so a small ``n`` keeps only those."""
    if n is None:
        return batch
    return {k: v[:n] for k, v in batch.items()}


@dataclass
class HyperstepResult:
    """What a fused inner + outer step yields: the inner objective's value (for the step's logs), dL_T/dW for
    every trainable primary parameter (detached, averaged across workers), and the hypergradient for phi."""

    inner: InnerResult
    w_grads: tuple[Tensor, ...]
    hypergrad: tuple[Tensor, ...]


class _Problem:
    """The bi-level problem at one outer step as pure functions of the hypergradient's parameter subset."""

    def __init__(
        self,
        objective: Objective,
        model: nn.Module,
        auxnet: nn.Module,
        train_batch: Batch,
        aux_batch: Batch,
        mask: list[bool],
    ) -> None:
        self.objective, self.train_batch, self.aux_batch = objective, train_batch, aux_batch
        w_names, w = trainable(model)
        phi_names, phi = trainable(auxnet)
        self.model_at, self.aux_at = functional(model, w_names), functional(auxnet, phi_names)
        self.w, self.phi = w, phi
        self.sub = [i for i, m in enumerate(mask) if m]
        self.rest = [i for i, m in enumerate(mask) if not m]

    def full(self, sub: Vec, base: Vec) -> Vec:
        """All primary parameters: ``sub`` at the subset's places, ``base`` (detached) elsewhere."""
        out = [t.detach() for t in base]
        for i, t in zip(self.sub, sub):
            out[i] = t
        return tuple(out)

    def inner_result(self, base: Vec) -> Callable[[Vec, Vec], InnerResult]:
        return lambda sub, phi: self.objective.inner(
            self.model_at(self.full(sub, base)), self.aux_at(phi), self.train_batch
        )

    def inner_fn(self, base: Vec) -> Callable[[Vec, Vec], Tensor]:
        return lambda sub, phi: self.inner_result(base)(sub, phi).loss

    def outer_fn(self, base: Vec) -> Callable[[Vec], Tensor]:
        return lambda sub: self.objective.outer(self.model_at(self.full(sub, base)), self.aux_batch)


def _reduced(reduce: Reduce | None, phases: Phases) -> Reduce | None:
    """The all-reduce hook, timed as communication."""
    if reduce is None:
        return None

    def timed(vec: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        with phases("communication"):
            return tuple(reduce(vec))

    return timed


def _timed_hvp(phases: Phases) -> Callable[[HVP], HVP]:
    def wrap(hvp: HVP) -> HVP:
        def timed(vec: Vec) -> Vec:
            with phases("hvp"):
                return hvp(vec)

        return timed

    return wrap


def _from_gradient(
    p: _Problem,
    grads: Vec,
    sub: Vec,
    phi: Vec,
    direct: Tensor | None,
    cfg: HypergradConfig,
    lr: float,
    reduce: Reduce | None,
    phases: Phases,
) -> Vec:
    """The hypergradient given dL_T/dW_sub at W (a create_graph graph for the implicit and unrolled methods,
    a plain gradient for finite differences) and the direct term on phi from the same inner pass."""
    if cfg.method in IMPLICIT:
        with phases("aux_gradient"):
            v = outer_gradient(p.outer_fn(p.w)(sub), sub, reduce)
        with phases("solve_and_mixed_term"):
            return implicit_from_graph(
                grads,
                v,
                sub,
                phi,
                method=cfg.method,
                steps=cfg.steps,
                alpha=cfg.alpha,
                tol=cfg.tol,
                damping=cfg.damping,
                reduce=reduce,
                reduce_hvp=cfg.mode == "global",
                hvp_wrap=_timed_hvp(phases),
                direct=direct,
            )
    with phases("aux_gradient"):
        if cfg.method == "unroll":
            res = unrolled_from_graph(grads, p.outer_fn(p.w), sub, phi, lr=lr, direct=direct)
        else:
            res = _plus(
                finite_difference_from_grad(grads, p.inner_fn(p.w), p.outer_fn(p.w), sub, phi, lr=lr, eps=cfg.fd_eps),
                _direct_gradient(direct, phi),
            )
    return tuple(reduce(tuple(res))) if reduce is not None else tuple(res)


def _plus(a: Vec, b: Vec | None) -> Vec:
    return a if b is None else tuple(x + y for x, y in zip(a, b))


def _direct_gradient(direct: Tensor | None, phi: Vec) -> Vec | None:
    """d(direct)/dphi, zeros where unreached; None when the method has no direct term."""
    if direct is None or not direct.requires_grad:
        return None
    return tuple(
        g.detach() for g in fill_zeros(torch.autograd.grad(direct, phi, retain_graph=True, allow_unused=True), phi)
    )


def compute_hypergrad(
    objective: Objective,
    model: nn.Module,
    auxnet: nn.Module,
    train_batch: Batch,
    aux_batch: Batch,
    cfg: HypergradConfig,
    *,
    inner_lr: float,
    reduce: Reduce | None = None,
    mask: list[bool] | None = None,
    phases: Phases = no_phases,
) -> tuple[Tensor, ...]:
    """dL_A/dphi (plus the direct regulariser term) for one outer step at the current W, by cfg.method, on at
    most cfg.batch_size samples and through the parameters ``mask`` selects (all when None)."""
    names, _ = trainable(model)
    p = _Problem(
        objective,
        model,
        auxnet,
        first_rows(train_batch, cfg.batch_size),
        first_rows(aux_batch, cfg.batch_size),
        mask or [True] * len(names),
    )
    reduce = _reduced(reduce, phases)
    sub = tuple(p.w[i] for i in p.sub)
    w_sub, phi = leaves(sub), leaves(p.phi)
    with batch_stats_only(model, auxnet), torch.enable_grad():
        if cfg.method == "fd" or cfg.hvp == "fwdrev":
            with phases("direct_term"):
                direct = _direct_gradient(p.inner_result(p.w)(w_sub, phi).regulariser, phi)
            with phases("solve_and_mixed_term"):
                if cfg.method == "fd":
                    grads = _plus(
                        finite_difference_hypergrad(
                            p.inner_fn(p.w), p.outer_fn(p.w), sub, p.phi, lr=cfg.unroll_lr or inner_lr, eps=cfg.fd_eps
                        ),
                        direct,
                    )
                    return tuple(reduce(grads)) if reduce is not None else grads
                grads = functional_implicit_hypergrad(
                    p.inner_fn(p.w),
                    p.outer_fn(p.w),
                    sub,
                    p.phi,
                    method=cfg.method,
                    steps=cfg.steps,
                    alpha=cfg.alpha,
                    tol=cfg.tol,
                    damping=cfg.damping,
                    hvp=cfg.hvp,
                    reduce=reduce,
                    reduce_hvp=cfg.mode == "global",
                )
            if direct is not None and reduce is not None:
                direct = tuple(reduce(direct))
            return _plus(tuple(grads), direct)
        with phases("graph_build"):
            result = p.inner_result(p.w)(w_sub, phi)
            g = fill_zeros(torch.autograd.grad(result.loss, w_sub, create_graph=True, allow_unused=True), w_sub)
        return _from_gradient(p, g, w_sub, phi, result.regulariser, cfg, cfg.unroll_lr or inner_lr, reduce, phases)


def fused_hyperstep(
    objective: Objective,
    model: nn.Module,
    auxnet: nn.Module,
    train_batch: Batch,
    aux_batch: Batch,
    cfg: HypergradConfig,
    *,
    inner_lr: float,
    reduce: Reduce | None = None,
    mask: list[bool] | None = None,
    phases: Phases = no_phases,
) -> HyperstepResult:
    """An inner step's gradient and an outer step's hypergradient from one forward and backward over the
    training batch (the inner step's own; BatchNorm running statistics update once, as in a plain step).

    Only the subset ``mask`` selects gets a differentiable (create_graph) gradient; the rest a plain one.
    Not for ``cfg.batch_size`` (a sub-batch needs a forward of its own: use compute_hypergrad) or fwdrev HVPs.
    """
    names, _ = trainable(model)
    p = _Problem(objective, model, auxnet, train_batch, aux_batch, mask or [True] * len(names))
    reduce = _reduced(reduce, phases)
    w, phi = leaves(p.w), leaves(p.phi)
    sub, rest = tuple(w[i] for i in p.sub), tuple(w[i] for i in p.rest)
    with torch.enable_grad():
        with phases("inner_forward_backward"):
            result = objective.inner(p.model_at(w), p.aux_at(phi), train_batch)
            g_rest = fill_zeros(
                torch.autograd.grad(result.loss, rest, retain_graph=True, allow_unused=True) if rest else (), rest
            )
        with phases("graph_build"):
            g_sub = fill_zeros(
                torch.autograd.grad(
                    result.loss, sub, create_graph=cfg.method != "fd", retain_graph=True, allow_unused=True
                ),
                sub,
            )
        w_grads: list[Tensor] = [torch.empty(0)] * len(w)
        for i, g in zip(p.sub, g_sub):
            w_grads[i] = g.detach()
        for i, g in zip(p.rest, g_rest):
            w_grads[i] = g
        reduced_w = tuple(reduce(tuple(w_grads))) if reduce is not None else tuple(w_grads)
        with batch_stats_only(model, auxnet):
            grads = _from_gradient(
                p, g_sub, sub, phi, result.regulariser, cfg, cfg.unroll_lr or inner_lr, reduce, phases
            )
    result.loss = result.loss.detach()
    return HyperstepResult(result, reduced_w, grads)
