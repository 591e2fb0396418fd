"""Per-batch augmentation and normalisation of uint8 image tensors, deterministic given a torch.Generator."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def normalize(x: Tensor, mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD) -> Tensor:
    """uint8 [B, C, H, W] in 0..255 -> float32 (x / 255 - mean) / std per channel."""
    c = x.shape[1]
    m = torch.as_tensor(_per_channel(mean, c), dtype=torch.float32, device=x.device).view(1, c, 1, 1)
    s = torch.as_tensor(_per_channel(std, c), dtype=torch.float32, device=x.device).view(1, c, 1, 1)
    return (x.float().div_(255.0) - m) / s


def _per_channel(values: Sequence[float], channels: int) -> list[float]:
    """Statistics per channel; a 3-channel statistic is averaged for other channel counts."""
    vals = list(values)
    if len(vals) == channels:
        return vals
    return [sum(vals) / len(vals)] * channels


def random_crop_flip(x: Tensor, generator: torch.Generator | None = None, padding: int = 4) -> Tensor:
    """Random crop of each image after zero padding by `padding` pixels, then a random horizontal flip (p=0.5)."""
    b, _, h, w = x.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
    flip = torch.rand(b, generator=generator, device=gen_device).lt(0.5).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (oy[:, None] + torch.arange(h, device=x.device)).view(b, h, 1)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols).view(b, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def resize_images(x: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Resize uint8 square images [N, C, H, W] to size x size (bilinear, antialiased), chunk by chunk."""
    if x.shape[-2:] == (size, size):
        return x
    return torch.cat([TF.resize(x[i : i + chunk], [size, size], antialias=True) for i in range(0, len(x), chunk)])
