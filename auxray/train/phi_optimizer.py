"""The auxiliary network's optimizer, clipping and version: one object shared by the local loop
and the Ray coordinator actor, so both apply hypergradients the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from auxray.method_settings import OuterOptimizer


def make_phi_optimizer(params: Sequence[Tensor], cfg: OuterOptimizer) -> torch.optim.Optimizer:
    """Adam (default, insensitive to the hypergradient's scale) or SGD over phi."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class PhiOptimizer:
    """Applies hypergradients to phi in place; a step id that was already applied is ignored."""

    bytes_sent = 0  # phi lives in this process: nothing is sent

    def __init__(self, auxnet: nn.Module, cfg: OuterOptimizer) -> None:
        self.params = [p for p in auxnet.parameters() if p.requires_grad]
        self.optimizer = make_phi_optimizer(self.params, cfg)
        self.lr, self.weight_decay = cfg.lr, cfg.weight_decay
        self.clip, self.lower_bound = cfg.grad_clip, cfg.lower_bound
        self.version = 0
        self.last_step = -1

    def apply(self, grads: Sequence[Tensor], step: int, lr: float | None = None) -> bool:
        """Set phi's gradients, clip, take one optimizer step (at learning rate ``lr`` when given, which it keeps)
        and project onto phi >= outer.lower_bound when set; False when `step` was applied before."""
        if step <= self.last_step:
            return False
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g.detach().to(device=p.device, dtype=p.dtype).clone()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        if self.lower_bound is not None:  # the projection onto phi >= lower_bound
            with torch.no_grad():
                for p in self.params:
                    p.clamp_(min=self.lower_bound)
        self.optimizer.zero_grad(set_to_none=True)
        self.version += 1
        self.last_step = step
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "version": self.version, "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the moments and counters; the learning rate and weight decay stay the config's (the same on a
        plain resume; a population-based sweep's exploit restores another trial's state under perturbed ones)."""
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"], group["weight_decay"] = self.lr, self.weight_decay
        self.version = state["version"]
        self.last_step = state["last_step"]
