"""Direct solve of u = H^{-1} v with the full Hessian (small problems and tests only)."""

from __future__ import annotations

import torch

from auxray.hypergrad.vectors import HVP, Vec, flatten, unflatten


def dense_hessian(hvp: HVP, like: Vec) -> torch.Tensor:
    """The n x n matrix of ``hvp`` built column by column from unit vectors (n HVPs)."""
    flat = flatten(like)
    n = flat.numel()
    eye = torch.eye(n, dtype=flat.dtype, device=flat.device)
    cols = [flatten(hvp(unflatten(eye[i], like))) for i in range(n)]
    return torch.stack(cols, dim=1)


def exact_solve(hvp: HVP, v: Vec) -> Vec:
    """u = H^{-1} v by a dense solve; a singular H (e.g. params the loss ignores) uses the pseudo-inverse."""
    if not v:
        return ()
    h = dense_hessian(hvp, v)
    h = 0.5 * (h + h.T)
    rhs = flatten(v)
    try:
        u = torch.linalg.solve(h, rhs)
    except torch.linalg.LinAlgError:
        u = torch.linalg.pinv(h, hermitian=True) @ rhs
    return unflatten(u, v)
