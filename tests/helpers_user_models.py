"""A user's own backbone and auxiliary task, as a config names them by import path
(``tests.helpers_user_models:tiny_trunk``); used by tests/test_config.py and tests/test_train.py."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from auxray.methods.aux_tasks import LossFnTask
from auxray.methods.base import Batch

CALLS: list[dict[str, object]] = []


def tiny_trunk(*, in_channels: int, width: int, in_features: int | None) -> tuple[nn.Module, int]:
    """A one-layer trunk: vectors through a linear layer, images through a strided conv and a global pool."""
    CALLS.append({"in_channels": in_channels, "width": width, "in_features": in_features})
    if in_features is not None:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.Tanh()), width
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ), width


def _helpful_loss(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """Squared error of the "helper" head on the synthetic data's helpful auxiliary target (y's column 1)."""
    return (outputs["helper"].squeeze(-1) - batch["y"][:, 1]) ** 2


def helpful_target(task: str) -> LossFnTask:
    """An auxiliary task from a per-sample loss callable: regress the synthetic data's helpful column."""
    return LossFnTask({"helper": 1}, _helpful_loss, task=task)


def _helpful_and_misleading_losses(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """[B, 2]: the helpful target's squared error on the "helper" head, and a misleading one that pulls the main
    head towards the synthetic data's mostly-noise column (y's column 2): weighing it in harms the main task."""
    helper = (outputs["helper"].squeeze(-1) - batch["y"][:, 1]) ** 2
    misleading = (outputs["main"].squeeze(-1) - batch["y"][:, 2]) ** 2 + 0 * outputs["misleading"].squeeze(-1)
    return torch.stack([helper, misleading], dim=1)


def helpful_and_misleading(task: str) -> LossFnTask:
    """Two auxiliary tasks, one helpful and one harmful (it fights the main task on the main head)."""
    return LossFnTask({"helper": 1, "misleading": 1}, _helpful_and_misleading_losses, task=task)


def not_a_task(task: str) -> str:
    """A factory that returns something that is not an auxiliary task."""
    return "oops"


NOT_CALLABLE = 3
