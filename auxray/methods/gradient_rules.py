"""How an inner result becomes W's gradients: the plain sum of losses, or gradient cosine similarity (GCS).
A rule is a value an objective holds, so the loop asks it, never the method's name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from auxray.methods.base import InnerResult, main_mean

Reduce = Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]


def cosine(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Cosine similarity of two gradients given as tensor lists."""
    fa = torch.cat([t.reshape(-1) for t in a])
    fb = torch.cat([t.reshape(-1) for t in b])
    return torch.nn.functional.cosine_similarity(fa, fb, dim=0, eps=1e-12)


class GradientRule(Protocol):
    """Writes W's gradients (``p.grad``) for one inner result and returns what to log about it.

    ``reduces_itself`` False: the loop runs the data-parallel (DDP) model and backward all-reduces;
    True: the loop runs the bare model and the rule all-reduces with ``all_reduce_mean`` itself."""

    @property
    def reduces_itself(self) -> bool: ...

    def backward(self, result: InnerResult, model: nn.Module, all_reduce_mean: Reduce) -> dict[str, float]: ...


class SumRule:
    """Backpropagate the inner loss as it is."""

    reduces_itself = False

    def backward(self, result: InnerResult, model: nn.Module, all_reduce_mean: Reduce) -> dict[str, float]:
        result.loss.backward()
        return {}


class GCSRule:
    """Gradient cosine similarity (Du et al.): the auxiliary gradient on the shared trunk is used only when it
    does not point against the main task's gradient; heads get the plain sum. The main loss is the mean over the
    labelled rows (as in every other method), the auxiliary losses the mean over all rows."""

    reduces_itself = True

    def backward(self, result: InnerResult, model: nn.Module, all_reduce_mean: Reduce) -> dict[str, float]:
        if result.main_per_sample is None or result.aux_per_sample is None:
            raise ValueError("GCS needs per-sample main and auxiliary losses")
        shared = [p for p in model.get_submodule("trunk").parameters() if p.requires_grad]
        heads = [p for n, p in model.named_parameters() if not n.startswith("trunk.") and p.requires_grad]
        main = main_mean(result.main_per_sample, result.labeled)
        aux = result.aux_per_sample.sum(dim=1).mean()
        g_main = all_reduce_mean(torch.autograd.grad(main, shared, retain_graph=True))
        g_aux = all_reduce_mean(torch.autograd.grad(aux, shared, retain_graph=True))
        cos = float(cosine(g_main, g_aux))
        g_heads = torch.autograd.grad(main + aux, heads, allow_unused=True)
        g_heads = all_reduce_mean(tuple(torch.zeros_like(p) if g is None else g for p, g in zip(heads, g_heads)))
        use_aux = 1.0 if cos > 0 else 0.0
        for p, gm, ga in zip(shared, g_main, g_aux):
            p.grad = gm + use_aux * ga
        for p, g in zip(heads, g_heads):
            p.grad = g
        return {"grad_cosine/aux": cos}


SUM = SumRule()
