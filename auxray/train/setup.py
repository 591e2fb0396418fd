"""How a run is set up before its first step: device, seeds, the primary network's optimizer and schedule."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler

from auxray.config import RunConfig
from auxray.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; a CUDA device this machine does not have is one line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"trainer.device: {name!r} is not a device ({str(err).splitlines()[0]})") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(
            f"trainer.device: {name} asks for a CUDA GPU, but this machine has {torch.cuda.device_count()} "
            "(use auto or cpu)"
        )
    return device


def check_gpus(gpus_per_worker: float, workers: int) -> None:
    """A data-parallel run on a local Ray instance needs the GPUs it asks for on this machine (Ray would wait for
    them forever)."""
    needed = gpus_per_worker * workers
    if needed > torch.cuda.device_count():
        raise UserError(
            f"--gpus-per-worker {gpus_per_worker:g} with {workers} workers needs {needed:g} GPUs, but this machine "
            f"has {torch.cuda.device_count()} (a cluster's GPUs are used with --address or RAY_ADDRESS)"
        )


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
