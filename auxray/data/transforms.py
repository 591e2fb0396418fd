"""Per-batch augmentation and normalisation of uint8 image tensors, deterministic given a torch.Generator."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2
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


def denormalize(x: Tensor, mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD) -> Tensor:
    """The inverse of normalize: float (x / 255 - mean) / std -> uint8 0..255 (rounded)."""
    c = x.shape[1]
    m = torch.as_tensor(_per_channel(mean, c), dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    s = torch.as_tensor(_per_channel(std, c), dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    return ((x * s + m) * 255.0).round_().clamp_(0, 255).to(torch.uint8)


RAND_AUGMENT_GROUP = 8  # images that share one draw of RandAugment's operations


def rand_augment(
    x: Tensor,
    generator: torch.Generator | None = None,
    mean: Sequence[float] = CIFAR_MEAN,
    std: Sequence[float] = CIFAR_STD,
    group: int = RAND_AUGMENT_GROUP,
) -> Tensor:
    """A strongly augmented copy of normalised images (torchvision's RandAugment, 2 operations at magnitude 9, as
    FixMatch uses), deterministic given `generator`. RandAugment draws one set of operations per call, so each
    group of `group` images gets its own draw: per-image calls would cost a launch per image and operation on a GPU."""
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device if generator else "cpu"))
    images = denormalize(x, mean, std)
    augment = v2.RandAugment(num_ops=2, magnitude=9)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.cat([augment(images[i : i + group]) for i in range(0, len(images), group)])
    return normalize(out, mean, std).to(x.dtype)


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
