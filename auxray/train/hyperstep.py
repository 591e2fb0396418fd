"""One outer step's hypergradient for any method: builds pure inner/outer functions over (W, phi)
with torch.func.functional_call and hands them to auxray.hypergrad.

Two ways in. ``compute_hypergrad`` differentiates at the current W on its own (the inner step has already
run). ``fused_hyperstep`` is an inner step and an outer step in one: the training batch's forward and
backward run once, that gradient updates W, and its graph serves the hypergradient, which saves one forward
and one backward over the training batch per outer step. Both take the run's Hypergradient, built once by
auxray.train.hypergradient.build_hypergradient, call its rule, and honour its cost options: the parameter subset
(differentiate through part of W, the rest held fixed) and the sample cap.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from auxray.hypergrad import batch_stats_only
from auxray.hypergrad.rules import Phases, direct_gradient, no_phases
from auxray.hypergrad.vectors import Reduce, Vec, fill_zeros, leaves
from auxray.methods import Batch, InnerResult, Objective
from auxray.models import last_block_prefixes
from auxray.train.hypergradient import Hypergradient

__all__ = [
    "Direction",
    "HyperstepResult",
    "Hypergradient",
    "PhaseTimer",
    "Phases",
    "compute_hypergrad",
    "first_rows",
    "functional",
    "fused_hyperstep",
    "hypergrad_mask",
    "no_phases",
    "trainable",
]


Direction = Callable[[Vec], Vec]  # the hypergradient subset's gradients -> the inner optimizer's step direction


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
        outer_batch: Batch,
        mask: list[bool],
    ) -> None:
        self.objective, self.train_batch, self.outer_batch = objective, train_batch, outer_batch
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
        return lambda sub: self.objective.outer(self.model_at(self.full(sub, base)), self.outer_batch)


def _reduced(reduce: Reduce | None, phases: Phases) -> Reduce | None:
    """The all-reduce hook, timed as communication."""
    if reduce is None:
        return None

    def timed(vec: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        with phases("communication"):
            return tuple(reduce(vec))

    return timed


def _mask(hg: Hypergradient, model: nn.Module) -> list[bool]:
    """The parameter subset as one flag per trainable parameter (all of them when the value selects none)."""
    return list(hg.mask) if hg.mask is not None else [True] * len(trainable(model)[0])


def compute_hypergrad(
    objective: Objective,
    model: nn.Module,
    auxnet: nn.Module,
    train_batch: Batch,
    outer_batch: Batch,
    hg: Hypergradient,
    *,
    inner_lr: float,
    reduce: Reduce | None = None,
    phases: Phases = no_phases,
    direction: Direction | None = None,
) -> tuple[Tensor, ...]:
    """dL_A/dphi (plus the direct regulariser term) for one outer step at the current W, by the hypergradient's
    rule, on at most its batch_size samples and through the parameters its mask selects. ``direction``: the inner
    optimizer's step direction from the subset's gradients, for a rule that looks ahead (None: the plain gradient,
    an SGD step)."""
    p = _Problem(
        objective,
        model,
        auxnet,
        first_rows(train_batch, hg.batch_size),
        first_rows(outer_batch, hg.batch_size),
        _mask(hg, model),
    )
    reduce = _reduced(reduce, phases)
    sub = tuple(p.w[i] for i in p.sub)
    w_sub, phi = leaves(sub), leaves(p.phi)
    inner, outer, lr = p.inner_fn(p.w), p.outer_fn(p.w), hg.lr(inner_lr)
    look = direction if hg.rule.looks_ahead else None
    with batch_stats_only(model, auxnet), torch.enable_grad():
        if not hg.rule.needs_graph and look is None:
            with phases("direct_term"):
                direct = direct_gradient(p.inner_result(p.w)(w_sub, phi).regulariser, phi)
            with phases("solve_and_mixed_term"):
                return hg.rule.from_functions(inner, outer, sub, p.phi, direct, lr, reduce)
        with phases("graph_build"):
            result = p.inner_result(p.w)(w_sub, phi)
            g = fill_zeros(
                torch.autograd.grad(
                    result.loss,
                    w_sub,
                    create_graph=hg.rule.differentiates_gradient,
                    retain_graph=True,
                    allow_unused=True,
                ),
                w_sub,
            )
        if not hg.rule.differentiates_gradient and reduce is not None:
            g = tuple(reduce(tuple(g)))  # the look-ahead along the all-reduced gradient, as the fused step takes it
        g = look(g) if look is not None else g
        return hg.rule.from_gradient(g, inner, outer, w_sub, phi, result.regulariser, lr, reduce, phases)


def fused_hyperstep(
    objective: Objective,
    model: nn.Module,
    auxnet: nn.Module,
    train_batch: Batch,
    outer_batch: Batch,
    hg: Hypergradient,
    *,
    inner_lr: float,
    reduce: Reduce | None = None,
    phases: Phases = no_phases,
    direction: Direction | None = None,
) -> HyperstepResult:
    """An inner step's gradient and an outer step's hypergradient from one forward and backward over the
    training batch (the inner step's own; BatchNorm running statistics update once, as in a plain step).

    Only the subset the value's mask selects gets a differentiable (create_graph) gradient when the
    rule differentiates it; the rest a plain one. Not for a batch_size (a sub-batch needs a forward of its own: use
    compute_hypergrad) or fwdrev HVPs. ``direction`` as in compute_hypergrad (at the W before this step's update).
    """
    p = _Problem(objective, model, auxnet, train_batch, outer_batch, _mask(hg, model))
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
                    result.loss,
                    sub,
                    create_graph=hg.rule.differentiates_gradient,
                    retain_graph=True,
                    allow_unused=True,
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
            inner, outer = p.inner_fn(p.w), p.outer_fn(p.w)
            # A rule that does not differentiate the gradient looks ahead along the all-reduced one (the step W takes).
            step = g_sub if hg.rule.differentiates_gradient else tuple(reduced_w[i] for i in p.sub)
            ahead = direction(step) if direction is not None and hg.rule.looks_ahead else step
            grads = hg.rule.from_gradient(
                ahead, inner, outer, sub, phi, result.regulariser, hg.lr(inner_lr), reduce, phases
            )
    result.loss = result.loss.detach()
    return HyperstepResult(result, reduced_w, grads)
