"""The AuxiLearn-style illustrative regression task: one main target, one helpful and one harmful auxiliary."""

from __future__ import annotations

import torch

from auxray.data.tensors import TensorData

TARGETS = ("main", "helpful", "harmful")


def make_synthetic(
    n: int,
    dim: int = 20,
    *,
    seed: int = 0,
    main_noise: float = 1.0,
    helpful_noise: float = 0.1,
    harmful_noise: float = 2.0,
) -> TensorData:
    """x ~ N(0, I); y[:, 0] = x.w + noise (main); y[:, 1] = x.w + small noise (helpful); y[:, 2] = 0.2 x.u + large
    noise (harmful: mostly noise, and its signal direction u is independent of w, so fitting it costs capacity)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=gen) / dim**0.5
    u = torch.randn(dim, generator=gen) / dim**0.5
    x = torch.randn(n, dim, generator=gen)
    noise = torch.randn(n, 3, generator=gen) * torch.tensor([main_noise, helpful_noise, harmful_noise])
    y = torch.stack([x @ w, x @ w, 0.2 * (x @ u)], dim=1) + noise
    return TensorData(x, y)
