"""Primary networks: trunks (convnet4, vgg16, resnet18, mlp) and the multi-head wrapper."""

from __future__ import annotations

from torch import nn

from auxray.models.backbones import MLPTrunk, VGG16Trunk, resnet18_cifar
from auxray.models.convnet import ConvNet4
from auxray.models.multihead import MultiHeadNet

BACKBONES = ("convnet4", "vgg16", "resnet18", "mlp")

# Parameter-name prefixes (inside MultiHeadNet) of each trunk's last block: what `hypergrad.params: last_block`
# differentiates through besides the heads. ConvNet-4's fourth conv block, ResNet-18's layer4, VGG-16's fifth
# conv block (features 34..41: three conv + BatchNorm pairs), the MLP's second linear layer.
_LAST_BLOCK = {
    "convnet4": ("trunk.blocks.3.",),
    "resnet18": ("trunk.layer4.",),
    "vgg16": tuple(f"trunk.features.{i}." for i in (34, 35, 37, 38, 40, 41)),
    "mlp": ("trunk.net.2.",),
}


def last_block_prefixes(backbone: str) -> tuple[str, ...]:
    """Name prefixes of the named backbone's last trunk block within a :class:`MultiHeadNet`."""
    if backbone not in _LAST_BLOCK:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    return _LAST_BLOCK[backbone]


def build_trunk(
    name: str, *, in_channels: int = 3, width: int = 64, in_features: int | None = None
) -> tuple[nn.Module, int]:
    """Build a trunk mapping inputs to flat features; returns ``(trunk, feat_dim)``.

    ``width`` sets convnet4's base channels and the MLP's hidden size; vgg16 and resnet18 have
    their standard widths (512 features). ``in_features`` is required for ``"mlp"``.
    """
    if name == "convnet4":
        trunk: nn.Module = ConvNet4(in_channels, width)
        return trunk, trunk.feat_dim
    if name == "vgg16":
        return VGG16Trunk(in_channels), VGG16Trunk.feat_dim
    if name == "resnet18":
        return resnet18_cifar(in_channels), 512
    if name == "mlp":
        if in_features is None:
            raise ValueError("the mlp backbone needs in_features")
        trunk = MLPTrunk(in_features, width)
        return trunk, trunk.feat_dim
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def build_primary(
    backbone: str,
    heads: dict[str, int],
    *,
    width: int = 64,
    in_channels: int = 3,
    in_features: int | None = None,
) -> MultiHeadNet:
    """A :class:`MultiHeadNet` on the named trunk with one linear head per entry of ``heads``."""
    trunk, feat_dim = build_trunk(backbone, in_channels=in_channels, width=width, in_features=in_features)
    return MultiHeadNet(trunk, feat_dim, heads)


__all__ = [
    "BACKBONES",
    "ConvNet4",
    "MLPTrunk",
    "MultiHeadNet",
    "VGG16Trunk",
    "build_primary",
    "build_trunk",
    "last_block_prefixes",
    "resnet18_cifar",
]
