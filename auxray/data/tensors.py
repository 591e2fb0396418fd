"""In-memory data sets as a pair of tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TensorData:
    """Inputs x (uint8 [N, C, H, W] images, or float features) and targets y (int64 labels or float [N, k])."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, indices: Tensor | Sequence[int]) -> TensorData:
        """The rows at `indices`, in that order (a copy)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorData(self.x[idx], self.y[idx])
