"""One outer step's hypergradient for any method: builds pure inner/outer functions over (W, phi)
with torch.func.functional_call and hands them to auxray.hypergrad."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call

from auxray.config import HypergradConfig
from auxray.hypergrad import finite_difference_hypergrad, functional_implicit_hypergrad, unrolled_hypergrad
from auxray.methods import Batch, Objective

Reduce = Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]


@contextmanager
def batch_stats_only(*modules: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with batch statistics but neither read nor update running ones,
    so hypersteps leave the running statistics alone (and stay pure for torch.func transforms)."""
    bns = [m for mod in modules for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in bns]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, s in zip(bns, saved):
            m.track_running_stats = s


def trainable(module: nn.Module) -> tuple[list[str], tuple[Tensor, ...]]:
    """Names and tensors of a module's trainable parameters."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return [n for n, _ in named], tuple(p for _, p in named)


def functional(module: nn.Module, names: list[str]) -> Callable[[tuple[Tensor, ...]], Callable[..., object]]:
    """params -> a callable that runs `module` with those parameters in place of its own."""
    buffers = dict(module.named_buffers())

    def bind(params: tuple[Tensor, ...]) -> Callable[..., object]:
        state = {**buffers, **dict(zip(names, params))}
        return lambda *args, **kwargs: functional_call(module, state, args, kwargs)

    return bind


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
) -> tuple[Tensor, ...]:
    """dL_A/dphi (plus the direct regulariser term) for one outer step, by cfg.method."""
    w_names, w = trainable(model)
    phi_names, phi = trainable(auxnet)
    model_at, aux_at = functional(model, w_names), functional(auxnet, phi_names)

    def inner_fn(params: tuple[Tensor, ...], hparams: tuple[Tensor, ...]) -> Tensor:
        return objective.inner(model_at(params), aux_at(hparams), train_batch).loss

    def outer_fn(params: tuple[Tensor, ...]) -> Tensor:
        return objective.outer(model_at(params), aux_batch)

    with batch_stats_only(model, auxnet):
        if cfg.method in ("neumann", "cg", "exact"):
            grads = functional_implicit_hypergrad(
                inner_fn, outer_fn, w, phi, method=cfg.method, steps=cfg.steps, alpha=cfg.alpha, tol=cfg.tol,
                damping=cfg.damping, hvp=cfg.hvp, reduce=reduce, reduce_hvp=cfg.mode == "global",
            )
        else:
            lr = cfg.unroll_lr or inner_lr
            if cfg.method == "unroll":
                grads = unrolled_hypergrad(inner_fn, outer_fn, w, phi, lr=lr)
            else:
                grads = finite_difference_hypergrad(inner_fn, outer_fn, w, phi, lr=lr, eps=cfg.fd_eps)
            if reduce is not None:
                grads = reduce(tuple(grads))
        direct = _direct_term(objective, aux_at, phi, train_batch)
        if direct is not None:
            if reduce is not None:
                direct = reduce(direct)
            grads = tuple(g + d for g, d in zip(grads, direct))
    return tuple(grads)


def _direct_term(objective: Objective, aux_at, phi: tuple[Tensor, ...], batch: Batch) -> tuple[Tensor, ...] | None:
    """Gradient of the method's regulariser on phi (e.g. MAXL's label-entropy term); None when it has none."""
    phi_leaf = tuple(p.detach().requires_grad_(True) for p in phi)
    with torch.enable_grad():
        reg = objective.regulariser(aux_at(phi_leaf), batch)
        if reg is None:
            return None
        grads = torch.autograd.grad(reg, phi_leaf, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(phi, grads))
