"""What the bi-level loop needs from a data-parallel layer (a Collective) and from whoever applies phi's
hypergradient (a PhiUpdater). The base Collective is the one-process case; Ray Train supplies the others."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from torch import Tensor, nn


class Collective:
    """What the loop needs from a data-parallel layer; this base class is the one-process case."""

    rank: int = 0
    world_size: int = 1
    bytes_sent: int = 0

    def all_reduce_mean(self, tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tensors

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return tensor

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model


class PhiUpdater(Protocol):
    """Applies an outer step's hypergradient to the aux net (locally, or through a coordinator)."""

    bytes_sent: int  # hypergradient bytes sent to a coordinator (0 when phi is updated in this process)

    def apply(self, grads: Sequence[Tensor], step: int, lr: float | None = None) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
