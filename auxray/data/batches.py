"""Batches straight from in-memory tensors: seeded epoch permutations, rank sharding, exact resume."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from auxray.data.tensors import TensorData
from auxray.data.transforms import CIFAR_MEAN, CIFAR_STD, normalize, random_crop_flip


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of integers, so (seed, epoch) pairs never collide arithmetically."""
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class BatchIterator:
    """(x, y) batches of this rank's disjoint slice of a (seed, epoch) permutation; uint8 images come out normalised.

    A finished pass moves on to the next epoch; state_dict() holds (epoch, position) for an exact resume."""

    def __init__(
        self,
        data: TensorData,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        augment: bool | None = False,
        device: str | torch.device = "cpu",
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.data, self.batch_size = data, batch_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.drop_last, self.augment = drop_last, bool(augment)
        self.device = torch.device(device)
        self.mean, self.std = mean, std
        self.images = data.x.dtype == torch.uint8
        self.epoch, self.position = 0, 0

    def shard_size(self) -> int:
        """Samples this rank sees per epoch."""
        n = len(self.data)
        if self.drop_last:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self.shard_size()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its first batch."""
        self.epoch, self.position = int(epoch), 0

    def indices(self, epoch: int | None = None) -> Tensor:
        """This rank's sample indices for an epoch, in iteration order (before batching)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.data)
        if self.shuffle:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)))
        else:
            perm = torch.arange(n)
        if self.drop_last:
            size = n // self.world_size
            return perm[self.rank * size : (self.rank + 1) * size]
        return perm[self.rank :: self.world_size]

    def _batch(self, idx: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Gather, move to the device, augment and normalise one batch."""
        src = self.data.x.device
        x = self.data.x[idx.to(src)].to(self.device, non_blocking=True)
        y = self.data.y[idx.to(self.data.y.device)].to(self.device, non_blocking=True)
        if not self.images:
            return x, y
        if self.augment:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self.rank, step, 1))
            x = random_crop_flip(x, gen)
        return normalize(x, self.mean, self.std), y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.indices()
        total = len(self)
        while self.position < total:
            step = self.position
            self.position += 1
            yield self._batch(order[step * self.batch_size : (step + 1) * self.batch_size], step)
        self.epoch, self.position = self.epoch + 1, 0

    def infinite(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches forever, one epoch after another (each with its own permutation)."""
        if len(self) == 0:
            raise ValueError(
                f"{len(self.data)} samples over {self.world_size} ranks make no batch of {self.batch_size}"
            )
        while True:
            yield from self

    def state_dict(self) -> dict[str, Any]:
        """Where the iteration stands: the epoch and how many of its batches were handed out."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a recorded (epoch, position); the next iteration yields the remaining batches."""
        if "seed" in state and state["seed"] != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this iterator uses seed {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
