"""Primary networks: trunk shapes, parameter counts, the multi-head wrapper and the builders."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from auxray.models import MultiHeadNet, build_trunk


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["convnet4", "vgg16", "resnet18"])
def test_image_trunks_give_512_features_on_32x32(name: str) -> None:
    torch.manual_seed(0)
    trunk, feat_dim = build_trunk(name)
    trunk.eval()
    with torch.no_grad():
        out = trunk(torch.randn(2, 3, 32, 32))
    assert feat_dim == 512
    assert out.shape == (2, 512)
    assert torch.isfinite(out).all()


def test_convnet4_channels_follow_width() -> None:
    trunk, feat_dim = build_trunk("convnet4", width=8, in_channels=1)
    convs = [m for m in trunk.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64]
    assert convs[0].in_channels == 1
    assert sum(isinstance(m, nn.MaxPool2d) for m in trunk.modules()) == 4
    assert feat_dim == 64
    assert trunk(torch.randn(3, 1, 32, 32)).shape == (3, 64)


def test_resnet18_cifar_stem_and_parameter_count() -> None:
    trunk, _ = build_trunk("resnet18")
    assert trunk.conv1.kernel_size == (3, 3) and trunk.conv1.stride == (1, 1)
    assert isinstance(trunk.maxpool, nn.Identity) and isinstance(trunk.fc, nn.Identity)
    net = MultiHeadNet(*build_trunk("resnet18"), {"main": 10})
    assert 11.1e6 < _count(net) < 11.3e6  # ResNet-18 for CIFAR-10: 11,173,962


def test_vgg16_parameter_count_has_no_imagenet_classifier() -> None:
    trunk, _ = build_trunk("vgg16")
    assert 14.6e6 < _count(trunk) < 14.8e6  # vgg16_bn conv features only (the classifier adds ~120M)
    assert not any(isinstance(m, nn.Linear) for m in trunk.modules())


def test_in_channels_reaches_first_conv() -> None:
    for name in ("vgg16", "resnet18"):
        trunk, _ = build_trunk(name, in_channels=1)
        first = next(m for m in trunk.modules() if isinstance(m, nn.Conv2d))
        assert first.in_channels == 1


def test_mlp_trunk_and_missing_in_features() -> None:
    trunk, feat_dim = build_trunk("mlp", in_features=7, width=16)
    assert feat_dim == 16
    assert trunk(torch.randn(5, 7)).shape == (5, 16)
    with pytest.raises(ValueError, match="in_features"):
        build_trunk("mlp")


def test_unknown_backbone_raises() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_trunk("alexnet")
    with pytest.raises(ValueError, match="unknown backbone"):
        MultiHeadNet(*build_trunk("alexnet"), {"main": 10})


def test_multihead_returns_every_head() -> None:
    torch.manual_seed(0)
    net = MultiHeadNet(*build_trunk("convnet4", width=8), {"main": 10, "rotation": 4, "labels": 50})
    assert isinstance(net, MultiHeadNet)
    net.eval()
    x = torch.randn(3, 3, 32, 32)
    out = net(x)
    assert set(out) == {"main", "rotation", "labels"}
    assert out["main"].shape == (3, 10) and out["rotation"].shape == (3, 4) and out["labels"].shape == (3, 50)
    again = net.heads_from(net.features(x))
    for k in out:
        torch.testing.assert_close(again[k], out[k])


def test_multihead_return_features_under_functional_call() -> None:
    torch.manual_seed(0)
    net = MultiHeadNet(*build_trunk("mlp", in_features=4, width=8), {"main": 1, "aux": 2})
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    x = torch.randn(6, 4)
    out = functional_call(net, params, (x,), {"return_features": True})
    assert set(out) == {"main", "aux", "features"}
    torch.testing.assert_close(out["features"], net.features(x))
    torch.testing.assert_close(out["main"], net(x)["main"])


def test_multihead_requires_main_head() -> None:
    trunk, feat_dim = build_trunk("mlp", in_features=3)
    with pytest.raises(ValueError, match="main"):
        MultiHeadNet(trunk, feat_dim, {"aux": 2})
    with pytest.raises(ValueError, match="features"):
        MultiHeadNet(trunk, feat_dim, {"main": 2, "features": 3})
