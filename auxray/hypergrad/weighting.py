"""Pure maths of the cheap task weightings: ARML's gradient matching and its projection onto the scaled simplex,
and the inner optimizer's own step direction (SGD with momentum and weight decay) for a look-ahead (Auto-lambda)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from auxray.hypergrad.vectors import Vec, dot


def project_scaled_simplex(v: Tensor, total: float) -> Tensor:
    """The Euclidean projection of a vector onto {a : a >= 0, sum(a) = total} (total > 0).

    Sort-based (Held et al. 1974; Duchi et al. 2008), O(K log K): the projection is max(v - theta, 0) with theta
    the one threshold that makes the sum ``total``. Written here because neither torch nor a well-kept small
    library offers it (cvxpy or scipy.optimize would solve a generic QP for a K-vector every few steps)."""
    if total <= 0:
        raise ValueError(f"the simplex's total must be positive, got {total}")
    u, _ = torch.sort(v, descending=True)
    cumulative = torch.cumsum(u, dim=0) - total
    ranks = torch.arange(1, v.numel() + 1, device=v.device, dtype=v.dtype)
    support = u - cumulative / ranks > 0  # true for the first rho entries, false after
    rho = int(support.nonzero().max()) + 1
    theta = cumulative[rho - 1] / rho
    return (v - theta).clamp(min=0)


def gram(vectors: Sequence[Vec]) -> Tensor:
    """The matrix of inner products between gradients given as tensor tuples, ``[n, n]``."""
    n = len(vectors)
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i, n):
            out[i, j] = out[j, i] = float(dot(vectors[i], vectors[j]))
    return out


def matching_gradient(g: Tensor, alpha: Tensor) -> Tensor:
    """d/d alpha of ||g_main - sum_k alpha_k g_k||^2 / ||g_main||^2 from the Gram matrix ``g`` of
    (g_main, g_1, ..., g_K): 2 (G^T G alpha - G^T g_main) / ||g_main||^2. Dividing by the main gradient's squared
    norm makes the objective scale-free, so one learning rate on alpha fits any model and loss scale."""
    aux_aux, aux_main, main_main = g[1:, 1:], g[1:, 0], g[0, 0]
    a = alpha.to(g.dtype)
    return 2 * (aux_aux @ a - aux_main) / main_main.clamp(min=1e-30)


def sgd_direction(
    grads: Vec, params: Vec, buffers: Sequence[Tensor | None], momentum: float, weight_decay: float, nesterov: bool
) -> Vec:
    """The direction torch.optim.SGD (dampening 0) steps along from these gradients: W' = W - lr * direction. The
    momentum buffers and weight decay do not depend on the task weights, so a look-ahead through this direction
    differentiates (or finite-differences) the gradient alone; ``grads`` may carry a graph, the rest is detached."""
    out = []
    for g, p, buf in zip(grads, params, buffers, strict=True):
        d = g + weight_decay * p.detach() if weight_decay else g
        if momentum and buf is not None:
            new_buf = momentum * buf.detach() + d
            d = d + momentum * new_buf if nesterov else new_buf
        elif momentum and nesterov:
            d = d + momentum * d
        out.append(d)
    return tuple(out)
