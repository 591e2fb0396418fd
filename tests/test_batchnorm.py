"""The one BatchNorm guard of hypersteps: batch statistics in, running statistics untouched, flags restored."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from auxray.hypergrad import batch_stats_only


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2), nn.BatchNorm1d(2)
    ).train()
    net(torch.randn(4, 3, 8, 8))
    return net


def test_batch_stats_only_normalises_by_the_batch_and_leaves_running_stats_alone():
    net = _bn_net()
    plain = copy.deepcopy(net)
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    ids = {k: id(v) for k, v in net.state_dict(keep_vars=True).items() if k in before}
    x = torch.randn(4, 3, 8, 8) + 3.0
    with batch_stats_only(net):
        out = net(x)
        assert not any(m.track_running_stats for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    torch.testing.assert_close(out, plain(x))  # a plain training-mode forward normalises the same way ...
    assert not torch.equal(plain.state_dict()["1.running_mean"], before["1.running_mean"])  # ... and moves stats
    after = net.state_dict(keep_vars=True)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
        assert id(after[k]) == ids[k], k
    assert all(m.track_running_stats for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def test_batch_stats_only_restores_flags_on_error_and_when_nested():
    net = _bn_net()
    net[5].track_running_stats = False
    with pytest.raises(RuntimeError, match="^boom$"):
        with batch_stats_only(net, net[1]):
            with batch_stats_only(net):
                pass
            assert not net[1].track_running_stats
            raise RuntimeError("boom")
    assert net[1].track_running_stats and not net[5].track_running_stats


def test_batch_stats_only_keeps_forward_passes_pure_for_torch_func():
    """A training-mode BatchNorm forward updates buffers in place, which torch.func transforms reject; inside
    the guard the same forward-over-reverse product runs and no buffer moves."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())
    x = torch.randn(8, 3)
    grad_fn = torch.func.grad(lambda p: functional_call(net, {**buffers, **p}, (x,)).pow(2).sum())
    tangent = {k: torch.ones_like(v) for k, v in params.items()}
    with pytest.raises(RuntimeError, match="in-place operation .* would mutate a captured Tensor"):
        torch.func.jvp(grad_fn, (params,), (tangent,))
    with batch_stats_only(net):
        torch.func.jvp(grad_fn, (params,), (tangent,))
    assert int(buffers["1.num_batches_tracked"]) == 0
