"""The coordinator: one Ray actor per run that owns phi, its optimizer, clipping and version number.
Workers send it the all-reduced hypergradient once per outer step and read the new phi back."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from auxray.method_settings import OuterOptimizer
from auxray.train.phi_optimizer import PhiOptimizer


class Coordinator:
    """Plain class (wrapped with ray.remote by the driver): phi lives here as CPU tensors."""

    def __init__(self, outer: dict[str, Any]) -> None:
        self.outer = OuterOptimizer.model_validate(outer)
        self.phi: nn.ParameterList | None = None
        self.optimizer: PhiOptimizer | None = None
        self.applied = 0

    def initialise(self, params: list[Tensor], state: dict[str, Any] | None = None) -> int:
        """Take phi (and, on restore, the optimizer state) from a worker's fresh model or checkpoint.
        Restoring always overwrites: the checkpoint is the consistent (W, phi) pair to resume from."""
        self.phi = nn.ParameterList([nn.Parameter(p.detach().cpu().clone()) for p in params])
        self.optimizer = PhiOptimizer(self.phi, self.outer)
        if state is not None:
            self.optimizer.load_state_dict(state)
        return self.optimizer.version

    def apply(self, grads: list[Tensor], step: int, lr: float | None = None) -> tuple[int, list[Tensor]]:
        """One optimizer step on phi from the all-reduced hypergradient (at the loop's learning rate ``lr`` when
        given); a replayed step id is ignored."""
        assert self.optimizer is not None and self.phi is not None, "coordinator not initialised"
        if self.optimizer.apply([g.cpu() for g in grads], step, lr):
            self.applied += 1
        return self.optimizer.version, self.current()

    def current(self) -> list[Tensor]:
        assert self.phi is not None, "coordinator not initialised"
        return [p.detach().clone() for p in self.phi]

    def get(self) -> tuple[int, list[Tensor]]:
        """The latest version number and phi."""
        assert self.optimizer is not None
        return self.optimizer.version, self.current()

    def state(self) -> dict[str, Any]:
        """phi and optimizer state, for the run's checkpoint."""
        assert self.optimizer is not None
        return {"phi": self.current(), "optimizer": self.optimizer.state_dict(), "applied": self.applied}

    def ping(self) -> bool:
        return True


class RemotePhiUpdater:
    """The loop's PhiUpdater on a worker: rank 0 sends the averaged hypergradient to the coordinator
    once; every worker then loads the published phi before its next inner step."""

    def __init__(self, coordinator: Any, auxnet: nn.Module, rank: int, barrier) -> None:
        self.coordinator, self.rank, self.barrier = coordinator, rank, barrier
        self.params = [p for p in auxnet.parameters() if p.requires_grad]
        self.version = 0
        self.bytes_sent = 0

    def apply(self, grads, step: int, lr: float | None = None) -> bool:
        import ray

        if self.rank == 0:
            cpu = [g.detach().cpu() for g in grads]
            self.bytes_sent += sum(g.numel() * g.element_size() for g in cpu)
            version, phi = ray.get(self.coordinator.apply.remote(cpu, step, lr))
            self.barrier()
        else:
            self.barrier()
            version, phi = ray.get(self.coordinator.get.remote())
        with torch.no_grad():
            for p, new in zip(self.params, phi, strict=True):
                p.copy_(new.to(p.device, p.dtype))
        changed = version != self.version
        self.version = version
        return changed

    def state_dict(self) -> dict[str, Any]:
        import ray

        return ray.get(self.coordinator.state.remote())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the coordinator from a checkpoint (rank 0 does it; the others wait for it)."""
        import ray

        if self.rank == 0:
            ray.get(self.coordinator.initialise.remote(state["phi"], state["optimizer"]))
        self.barrier()
        self.version = state["optimizer"]["version"]
