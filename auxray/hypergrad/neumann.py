"""Truncated Neumann series for u = H^{-1} v (AuxiLearn; Lorraine et al. 2020)."""

from __future__ import annotations

from auxray.hypergrad.vectors import HVP, Vec, axpy, scale


def neumann_solve(hvp: HVP, v: Vec, *, steps: int, alpha: float) -> Vec:
    """u = alpha * sum_{j=0..steps} (I - alpha H)^j v, using ``steps`` H-vector products.

    The factor alpha is included (auxray's convention), so u -> H^{-1} v as steps grows when
    0 < alpha < 2 / lambda_max(H); AuxiLearn's reference code omits it (its u is ours / alpha).
    """
    p, acc = v, v
    for _ in range(steps):
        p = axpy(-alpha, hvp(p), p)
        acc = axpy(1.0, p, acc)
    return scale(alpha, acc)
