"""Conjugate gradient for u = H^{-1} v (H symmetric, positive definite near a minimum)."""

from __future__ import annotations

import torch

from auxray.hypergrad.vectors import HVP, Vec, axpy, dot


def cg_solve(hvp: HVP, v: Vec, *, steps: int, tol: float) -> Vec:
    """Solve ``hvp(u) = v`` by CG from u = 0, for at most ``max(steps, 1)`` iterations.

    Stops once ||r|| <= tol * ||v|| (tolerance relative to the right-hand side). Returns zeros
    for v = 0 and stops early, without dividing by zero, when the curvature p^T H p vanishes.
    """
    u = tuple(torch.zeros_like(t) for t in v)
    rs = dot(v, v)
    threshold = (tol**2) * rs
    if rs.item() == 0.0:
        return u
    r, p = v, v
    for _ in range(max(steps, 1)):
        hp = hvp(p)
        curvature = dot(p, hp)
        if curvature.item() == 0.0 or not torch.isfinite(curvature).item():
            break
        step = rs / curvature
        u = axpy(step, p, u)
        r = axpy(-step, hp, r)
        rs_new = dot(r, r)
        if rs_new.item() <= threshold.item():
            break
        p = axpy(rs_new / rs, p, r)
        rs = rs_new
    return u
