"""MAXL's 4-layer ConvNet for 32x32 images."""

from __future__ import annotations

from torch import Tensor, nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """conv3x3 -> BatchNorm -> ReLU -> 2x2 max-pool."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class ConvNet4(nn.Module):
    """Four conv blocks with ``width, 2w, 4w, 8w`` channels, then global average pooling.

    Maps ``[B, in_channels, H, W]`` to flat features ``[B, 8 * width]`` (512 for the default width 64).
    """

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width, 8 * width]
        self.blocks = nn.Sequential(*(_block(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = 8 * width

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.blocks(x)).flatten(1)
