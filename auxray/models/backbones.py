"""Trunks from torchvision adapted to 32x32 inputs, and a small MLP trunk for vector inputs.

Every trunk maps its input to flat features ``[B, feat_dim]``. Weights are never downloaded.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision import models as tvm


class VGG16Trunk(nn.Module):
    """VGG-16 with BatchNorm (torchvision ``vgg16_bn`` features); the 224-specific avgpool and
    classifier are dropped. On 32x32 inputs the five max-pools leave ``[B, 512, 1, 1]``; a global
    average pool makes other sizes work too. Output: ``[B, 512]``."""

    feat_dim = 512

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        features = tvm.vgg16_bn(weights=None).features
        if in_channels != 3:
            first = features[0]
            features[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)


def resnet18_cifar(in_channels: int = 3) -> nn.Module:
    """torchvision ResNet-18 with the CIFAR stem (3x3 stride-1 conv1, no max-pool) and ``fc``
    replaced by Identity, so it returns the 512 pooled features."""
    net = tvm.resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


class MLPTrunk(nn.Module):
    """Two hidden layers ``in_features -> width -> width`` with ReLU, for synthetic vector inputs."""

    def __init__(self, in_features: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
        )
        self.feat_dim = width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))
