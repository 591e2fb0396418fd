"""In-memory data sets as a pair of tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

UNLABELED = -1  # the main label of an image that has none (cross-entropy ignores it)


@dataclass
class TensorData:
    """Inputs x (uint8 [N, C, H, W] images, or float features) and targets y: int64 labels, float [N, k]
    regression targets, or float [N, 1 + k] for labels with k per-image auxiliary columns (NaN where missing)."""

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

    def without_main_labels(self) -> TensorData:
        """The same rows with their main label set to UNLABELED (auxiliary columns kept)."""
        y = self.y.clone()
        if y.dim() > 1:
            y[:, 0] = UNLABELED
        else:
            y.fill_(UNLABELED)
        return TensorData(self.x, y)


def with_columns(data: TensorData, columns: Tensor) -> TensorData:
    """Class labels with per-image auxiliary columns attached: y becomes float [N, 1 + k], the label first."""
    if data.y.is_floating_point() or data.y.dim() != 1:
        raise ValueError("auxiliary columns attach to class labels")
    return TensorData(data.x, torch.cat([data.y.float().unsqueeze(1), columns.float()], dim=1))
