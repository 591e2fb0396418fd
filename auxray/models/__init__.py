"""Primary networks: trunks (convnet4, vgg16, resnet18, mlp) and the multi-head wrapper."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from auxray.config import BACKBONES
from auxray.importpath import is_import_path, resolve_callable
from auxray.models.backbones import MLPTrunk, VGG16Trunk, resnet18_cifar
from auxray.models.convnet import ConvNet4
from auxray.models.multihead import MultiHeadNet

# A trunk factory: called as factory(in_channels=..., width=..., in_features=...) (keywords; a factory may take
# **kwargs and ignore what it does not need), returns (trunk, feat_dim) with trunk mapping inputs to [B, feat_dim].
TrunkFactory = Callable[..., tuple[nn.Module, int]]
# A backbone: a built-in name (BACKBONES), an import path "package.module:factory", or a factory itself.
BackboneSpec = str | TrunkFactory

# Parameter-name prefixes (inside MultiHeadNet) of each trunk's last block: what `hypergrad.params: last_block`
# differentiates through besides the heads. ConvNet-4's fourth conv block, ResNet-18's layer4, VGG-16's fifth
# conv block (features 34..41: three conv + BatchNorm pairs), the MLP's second linear layer.
_LAST_BLOCK = {
    "convnet4": ("trunk.blocks.3.",),
    "resnet18": ("trunk.layer4.",),
    "vgg16": tuple(f"trunk.features.{i}." for i in (34, 35, 37, 38, 40, 41)),
    "mlp": ("trunk.net.2.",),
}


def last_block_prefixes(backbone: BackboneSpec) -> tuple[str, ...]:
    """Name prefixes of a built-in backbone's last trunk block within a :class:`MultiHeadNet`."""
    if not isinstance(backbone, str) or backbone not in _LAST_BLOCK:
        raise ValueError(
            f"hypergrad.params: last_block needs a built-in backbone ({', '.join(BACKBONES)}); "
            f"the last block of {backbone!r} is unknown, so use hypergrad.params: all"
        )
    return _LAST_BLOCK[backbone]


def _convnet4(*, in_channels: int, width: int, in_features: int | None) -> tuple[nn.Module, int]:
    trunk = ConvNet4(in_channels, width)
    return trunk, trunk.feat_dim


def _vgg16(*, in_channels: int, width: int, in_features: int | None) -> tuple[nn.Module, int]:
    return VGG16Trunk(in_channels), VGG16Trunk.feat_dim


def _resnet18(*, in_channels: int, width: int, in_features: int | None) -> tuple[nn.Module, int]:
    return resnet18_cifar(in_channels), 512


def _mlp(*, in_channels: int, width: int, in_features: int | None) -> tuple[nn.Module, int]:
    if in_features is None:
        raise ValueError("the mlp backbone needs in_features")
    trunk = MLPTrunk(in_features, width)
    return trunk, trunk.feat_dim


TRUNKS: dict[str, TrunkFactory] = {"convnet4": _convnet4, "vgg16": _vgg16, "resnet18": _resnet18, "mlp": _mlp}


def trunk_factory(spec: BackboneSpec) -> TrunkFactory:
    """The factory a backbone spec names: a built-in, an import path (imported now), or the callable itself."""
    if callable(spec):
        return spec
    if spec in TRUNKS:
        return TRUNKS[spec]
    if is_import_path(spec):
        return resolve_callable(spec)
    raise ValueError(
        f"unknown backbone {spec!r}; choose one of {', '.join(BACKBONES)}, or name your own as 'package.module:factory'"
    )


def build_trunk(
    spec: BackboneSpec, *, in_channels: int = 3, width: int = 64, in_features: int | None = None
) -> tuple[nn.Module, int]:
    """Build a trunk mapping inputs to flat features; returns ``(trunk, feat_dim)``.

    ``spec`` is a built-in name, ``"package.module:factory"`` or a factory callable; a factory is called as
    ``factory(in_channels=..., width=..., in_features=...)`` and returns ``(trunk, feat_dim)`` (a fresh module on
    every call: label methods build a second trunk for their generator). ``width`` sets convnet4's base channels
    and the MLP's hidden size; vgg16 and resnet18 have their standard widths (512 features). ``in_features``
    (vector inputs) is required for ``"mlp"`` and None for images.
    """
    out = trunk_factory(spec)(in_channels=in_channels, width=width, in_features=in_features)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module) and isinstance(out[1], int)):
        raise TypeError(f"backbone {spec!r} must return (trunk: nn.Module, feat_dim: int), got {type(out).__name__}")
    return out


__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "ConvNet4",
    "MLPTrunk",
    "MultiHeadNet",
    "TRUNKS",
    "TrunkFactory",
    "VGG16Trunk",
    "build_trunk",
    "last_block_prefixes",
    "resnet18_cifar",
    "trunk_factory",
]
