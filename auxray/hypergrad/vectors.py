"""Arithmetic on parameter-shaped tuples of tensors (the vectors the solvers work with)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

Vec = tuple[Tensor, ...]
HVP = Callable[[Vec], Vec]
Reduce = Callable[[Vec], Vec]


def fill_zeros(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> Vec:
    """Replace the ``None`` entries of an autograd result by zeros shaped like ``like``."""
    return tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, like))


def dot(a: Vec, b: Vec) -> Tensor:
    """Inner product of two parameter-shaped tuples (a 0-d tensor)."""
    if not a:
        return torch.zeros(())
    return torch.stack([torch.vdot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)]).sum()


def axpy(alpha: float | Tensor, x: Vec, y: Vec) -> Vec:
    """``y + alpha * x`` elementwise over the tuple."""
    if not x:
        return ()
    return tuple(torch._foreach_add(list(y), torch._foreach_mul(list(x), alpha)))


def scale(alpha: float | Tensor, x: Vec) -> Vec:
    """``alpha * x``."""
    return tuple(torch._foreach_mul(list(x), alpha)) if x else ()


def flatten(x: Vec) -> Tensor:
    """Concatenate a tuple of tensors into one flat vector."""
    return torch.cat([t.reshape(-1) for t in x])


def unflatten(flat: Tensor, like: Iterable[Tensor]) -> Vec:
    """Split a flat vector back into tensors shaped like ``like``."""
    out, i = [], 0
    for p in like:
        out.append(flat[i : i + p.numel()].view_as(p))
        i += p.numel()
    return tuple(out)


def leaves(tensors: Iterable[Tensor]) -> Vec:
    """Fresh detached leaves that require grad (so transforms never touch the caller's tensors)."""
    return tuple(t.detach().requires_grad_(True) for t in tensors)
