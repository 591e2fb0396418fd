"""How a run is set up before its first step: device, seeds, the primary network's optimizer and schedule."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler

from auxray.config import RunConfig


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_inner_optimizer(params: Sequence[Tensor], cfg: RunConfig) -> torch.optim.Optimizer:
    """The primary network's optimizer (SGD with momentum, or Adam) from trainer settings."""
    t = cfg.trainer
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: RunConfig, total_steps: int) -> LRScheduler:
    """The primary network's learning-rate schedule over `total_steps` inner steps."""
    kind = cfg.trainer.scheduler
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, total_steps // 3), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
