"""Rotation prediction (Gidaris et al., 2018) as a self-supervised auxiliary task."""

from __future__ import annotations

import torch
from torch import Tensor


def rotate_batch(x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Rotate each image [B, C, H, W] counter-clockwise by k * 90 degrees, k random in 0..3; returns (x_rot, k)."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    labels = torch.randint(0, 4, (x.shape[0],), generator=generator, device=gen_device).to(x.device)
    out = x.clone()
    for k in range(1, 4):
        mask = labels == k
        out[mask] = torch.rot90(x[mask], k, dims=(-2, -1))
    return out, labels
