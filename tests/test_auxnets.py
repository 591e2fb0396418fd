"""Auxiliary networks: combiners, label generator and its losses, JTDS scheduler, uncertainty weighting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auxray.auxnets import (
    LabelGenerator,
    LinearCombiner,
    NonlinearCombiner,
    TaskDataScheduler,
    UncertaintyWeighting,
    expand_psi,
    hierarchy_mask,
    label_entropy_regulariser,
    soft_cross_entropy,
)
from auxray.auxnets.uncertainty import LOSS_FLOOR


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---- combiners ----


def test_linear_combiner_monotone_weights_non_negative_and_task_weights_equal_them() -> None:
    comb = LinearCombiner(3, monotone=True)
    with torch.no_grad():
        comb.raw.copy_(torch.tensor([-5.0, 0.0, 2.0]))
    losses = torch.rand(8, 4)
    assert (comb.weights > 0).all()
    torch.testing.assert_close(comb(losses), losses[:, 1:] @ comb.weights)
    torch.testing.assert_close(comb.task_weights(losses), comb.weights.detach())
    torch.testing.assert_close(super(LinearCombiner, comb).task_weights(losses), comb.weights.detach())


def test_linear_combiner_starts_at_init_weight_and_ignores_main_column() -> None:
    comb = LinearCombiner(2, monotone=True, init_weight=1.0)
    torch.testing.assert_close(comb.weights.detach(), torch.ones(2))
    losses = torch.rand(4, 3)
    shifted = losses.clone()
    shifted[:, 0] += 10.0
    torch.testing.assert_close(comb(losses), comb(shifted))


@pytest.mark.parametrize(
    ("combiner", "monotone", "kind", "keeps_sign"),
    [
        ("linear", None, LinearCombiner, True),
        ("linear", False, LinearCombiner, False),
        ("linear", True, LinearCombiner, True),
        ("nonlinear", None, NonlinearCombiner, False),
        ("nonlinear", True, NonlinearCombiner, True),
    ],
)
def test_config_monotone_reaches_the_combiner(
    combiner: str, monotone: bool | None, kind: type, keeps_sign: bool
) -> None:
    """`method.monotone` as a config sets it (unset: the linear combiner stays non-negative, AuxiLearn's form); a
    non-monotone linear combiner built from a config can give a task a negative weight."""
    from auxray.config import config_from_dict
    from auxray.methods import build_objective

    method = {"name": "auxilearn_combine", "aux_task": "targets", "combiner": combiner}
    if monotone is not None:
        method["monotone"] = monotone
    cfg = config_from_dict({"data": {"dataset": "synthetic"}, "model": {"backbone": "mlp"}, "method": method})
    comb = build_objective(cfg, num_classes=1, task="regression", feat_dim=4, in_channels=1).build_auxnet(
        nn.Linear(1, 1)
    )
    assert type(comb) is kind and comb.monotone == keeps_sign
    if kind is LinearCombiner:
        with torch.no_grad():
            comb.raw.copy_(torch.tensor([-1.5, 0.5]))
        weights = comb.task_weights(torch.rand(3, 3))
        assert bool((weights < 0).any()) == (not keeps_sign), weights


@pytest.mark.parametrize("monotone", [False, True])
def test_nonlinear_combiner_is_the_softplus_of_its_mlp_over_the_aux_losses(monotone: bool) -> None:
    """g(l) = softplus(MLP(l_aux)) with the MLP by hand: non-negative through the softplus where the MLP is not."""
    comb = NonlinearCombiner(3, hidden=[10, 5], monotone=monotone)
    linears = [m for m in comb.net if not isinstance(m, nn.ReLU)]
    losses = torch.rand(64, 4) * 10

    def mlp(losses: torch.Tensor) -> torch.Tensor:
        h = losses[:, 1:]
        for i, layer in enumerate(linears):
            h = h @ (F.softplus(layer.raw) if monotone else layer.weight).T + layer.bias
            h = h.clamp(min=0) if i < len(linears) - 1 else h
        return h.squeeze(1)

    with torch.no_grad():
        for p in comb.parameters():
            p.copy_(torch.randn_like(p) * 2)
        linears[-1].bias.sub_(mlp(losses).median())  # about half of the MLP's outputs negative
    pre = mlp(losses)
    assert (pre < 0).any() and (pre > 0).any()
    torch.testing.assert_close(comb(losses), F.softplus(pre))


def test_nonlinear_monotone_combiner_is_non_decreasing_in_each_aux_loss() -> None:
    comb = NonlinearCombiner(3, hidden=[10], monotone=True)
    with torch.no_grad():
        for p in comb.parameters():
            p.add_(torch.randn_like(p) * 3)
    losses = torch.rand(32, 4) * 5
    weights = comb.task_weights(losses)
    assert weights.shape == (3,)
    assert (weights >= 0).all()
    bigger = losses.clone()
    bigger[:, 1:] += torch.rand(32, 3)
    assert (comb(bigger) >= comb(losses) - 1e-6).all()


def test_nonlinear_task_weights_match_finite_differences() -> None:
    comb = NonlinearCombiner(2, hidden=[10]).double()
    losses = torch.rand(16, 3, dtype=torch.float64)
    eps = 1e-6
    expected = []
    for k in range(2):
        up, down = losses.clone(), losses.clone()
        up[:, k + 1] += eps
        down[:, k + 1] -= eps
        expected.append(((comb(up) - comb(down)) / (2 * eps)).mean())
    torch.testing.assert_close(comb.task_weights(losses), torch.stack(expected).detach())


def test_combiner_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="n_aux=3"):
        LinearCombiner(3)(torch.rand(4, 3))


# ---- label generator ----


def test_expand_psi_int_and_list() -> None:
    assert expand_psi(3, 4) == [3, 3, 3, 3]
    assert expand_psi([1, 2, 3], 3) == [1, 2, 3]
    with pytest.raises(ValueError, match=r"psi has 2 entries, expected one per class \(3\)"):
        expand_psi([1, 2], 3)
    with pytest.raises(ValueError, match=r"every class needs at least one sub-class, got psi=\[1, 0, 2\]"):
        expand_psi([1, 0, 2], 3)


def test_hierarchy_mask_marks_the_true_class_block() -> None:
    mask = hierarchy_mask(torch.tensor([0, 2, 1]), [1, 2, 3])
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 1],
            [0, 1, 1, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("psi", [3, [1, 2, 5, 2]])
def test_label_generator_probability_only_on_true_block(psi: int | list[int]) -> None:
    psi_list = expand_psi(psi, 4)
    gen = LabelGenerator(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), 8, psi_list)
    with torch.no_grad():
        gen.head.weight.mul_(50.0)  # large logits: the softmax must still be exact and finite
    x, y = torch.randn(10, 6), torch.arange(10) % 4
    probs = gen(x, y)
    mask = hierarchy_mask(y, psi_list)
    assert probs.shape == (10, sum(psi_list))
    assert torch.isfinite(probs).all()
    assert (probs[~mask] == 0).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(10))
    single = torch.tensor([i for i, p in enumerate(psi_list) if p == 1])
    if len(single):
        in_single = torch.isin(y, single)
        assert (probs[in_single][mask[in_single]] == 1).all()
    (probs[:, 1] + probs[:, -1]).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in gen.parameters())
    assert gen.head.weight.grad.abs().sum() > 0


def test_entropy_regulariser_lower_for_spread_labels() -> None:
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    spread = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert label_entropy_regulariser(spread) < label_entropy_regulariser(collapsed)
    torch.testing.assert_close(label_entropy_regulariser(spread), torch.tensor(-math.log(2)))
    torch.testing.assert_close(label_entropy_regulariser(collapsed), torch.tensor(0.0))


def test_entropy_regulariser_gradient_finite_at_empty_subclass() -> None:
    gen = LabelGenerator(nn.Identity(), 3, [2, 2])
    probs = gen(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))  # class 1's block stays empty
    label_entropy_regulariser(probs).backward()
    assert torch.isfinite(gen.head.weight.grad).all()
    assert gen.head.weight.grad.abs().sum() > 0


def test_soft_cross_entropy_equals_ce_when_gamma_zero() -> None:
    logits = torch.randn(6, 5)
    target = torch.softmax(torch.randn(6, 5), dim=1)
    torch.testing.assert_close(soft_cross_entropy(logits, target), F.cross_entropy(logits, target, reduction="none"))
    hard = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(
        soft_cross_entropy(logits, F.one_hot(hard, 5).float()), F.cross_entropy(logits, hard, reduction="none")
    )


def test_focal_loss_down_weights_confident_samples() -> None:
    target = F.one_hot(torch.tensor([0, 0]), 3).float()
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.2, 0.0, 0.0]])  # confident, unsure
    ce = soft_cross_entropy(logits, target)
    focal = soft_cross_entropy(logits, target, gamma=2.0)
    assert (focal < ce).all()
    ratio = focal / ce
    assert ratio[0] < ratio[1]
    p = torch.softmax(logits, dim=1)[:, 0]
    torch.testing.assert_close(focal, (1 - p) ** 2 * ce)


# ---- JTDS scheduler ----


def test_scheduler_weights_in_open_unit_interval() -> None:
    sched = TaskDataScheduler(16, 3)
    with torch.no_grad():
        for p in sched.parameters():
            p.add_(torch.randn_like(p))
    w = sched(torch.randn(32, 16) * 10, torch.rand(32, 3) * 5)
    assert w.shape == (32, 3)
    assert ((w > 0) & (w < 1)).all()
    feats, losses = torch.randn(32, 16), torch.rand(32, 3)
    torch.testing.assert_close(sched.task_weights(feats, losses), sched(feats, losses).mean(dim=0).detach())


def test_scheduler_parameter_count_is_linear_in_d_times_tasks() -> None:
    for d, k in [(16, 3), (512, 5)]:
        n = sum(p.numel() for p in TaskDataScheduler(d, k).parameters())
        assert n == k * (d + 3)


def test_scheduler_gradients_reach_every_parameter() -> None:
    sched = TaskDataScheduler(8, 2)
    w = sched(torch.randn(10, 8), torch.rand(10, 2))
    (w * torch.rand(10, 2)).sum().backward()
    for name, p in sched.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_scheduler_uses_normalised_features_and_loss_filter() -> None:
    sched = TaskDataScheduler(8, 2)
    feats, losses = torch.randn(4, 8), torch.rand(4, 2)
    torch.testing.assert_close(sched(feats, losses), sched(feats * 7.0, losses))
    with torch.no_grad():
        sched.a.fill_(-3.0)
    low = sched(feats, torch.zeros(4, 2))
    high = sched(feats, torch.full((4, 2), 2.0))
    assert (high < low).all()


# ---- uncertainty weighting ----


def test_uncertainty_value_and_task_weights() -> None:
    uw = UncertaintyWeighting(2)
    losses = torch.tensor([0.5, 2.0])
    torch.testing.assert_close(uw(losses), (losses + LOSS_FLOOR).sum())
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(uw.task_weights(), torch.exp(torch.tensor([-1.0, 1.0])))


def test_uncertainty_gradient_pushes_s_toward_log_loss() -> None:
    uw = UncertaintyWeighting(2)
    losses = torch.tensor([0.5, 2.0])
    uw(losses).backward()
    assert uw.log_vars.grad[0] > 0  # s above log(0.5 + floor) < 0: descent lowers it
    assert uw.log_vars.grad[1] < 0  # s below log(2 + floor) > 0: descent raises it
    opt = torch.optim.SGD(uw.parameters(), lr=0.2)
    for _ in range(300):
        opt.zero_grad()
        uw(losses).backward()
        opt.step()
    torch.testing.assert_close(uw.log_vars.detach(), (losses + LOSS_FLOOR).log(), atol=1e-3, rtol=0)


def test_uncertainty_weight_of_a_task_whose_loss_is_zero_stays_bounded() -> None:
    """A loss that is 0 for many steps (pseudo-labels before any confident prediction) must not drive the weight to
    overflow: it settles at 1 / LOSS_FLOOR, and the weighted loss stays finite once the task's loss turns positive."""
    uw = UncertaintyWeighting(2)
    opt = torch.optim.SGD(uw.parameters(), lr=0.03, momentum=0.9)
    for _ in range(1000):
        opt.zero_grad()
        uw(torch.tensor([1.0, 0.0])).backward()
        opt.step()
    torch.testing.assert_close(uw.task_weights()[1], torch.tensor(1 / LOSS_FLOOR), rtol=1e-3, atol=0)
    assert torch.isfinite(uw(torch.tensor([1.0, 5.0])))
