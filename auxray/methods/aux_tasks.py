"""Given auxiliary tasks: what each adds to a batch and the per-sample losses it yields."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from auxray.data.rotation import rotate_batch
from auxray.methods.base import Batch, ForwardFn, main_loss, main_target


@dataclass
class TaskLosses:
    """Per-sample losses of one forward pass: main [B], auxiliaries [B, n_aux], main logits, features."""

    main: Tensor
    aux: Tensor
    logits: Tensor
    features: Tensor | None


class AuxTask:
    """No auxiliary task: the main loss alone (single-task learning)."""

    names: tuple[str, ...] = ()
    heads: dict[str, int] = {}

    def __init__(self, task: str = "classification") -> None:
        self.task = task

    def prepare(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Batch:
        return {"x": x, "y": y}

    def losses(self, forward: ForwardFn, batch: Batch, features: bool = False) -> TaskLosses:
        out = forward(batch["x"], return_features=features) if features else forward(batch["x"])
        y = main_target(batch["y"], self.task)
        main = main_loss(out["main"], y, self.task)
        return TaskLosses(main, main.new_zeros(main.shape[0], 0), out["main"], out.get("features"))


class RotationTask(AuxTask):
    """Rotation prediction (0/90/180/270 degrees) as a self-supervised auxiliary; one joint forward pass."""

    names = ("rotation",)
    heads = {"rotation": 4}

    def prepare(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Batch:
        x_rot, rot = rotate_batch(x, generator=generator)
        return {"x": x, "y": y, "x_rot": x_rot, "rot": rot}

    def losses(self, forward: ForwardFn, batch: Batch, features: bool = False) -> TaskLosses:
        x = batch["x"]
        n = x.shape[0]
        both = torch.cat([x, batch["x_rot"]], dim=0)
        out = forward(both, return_features=features) if features else forward(both)
        main = F.cross_entropy(out["main"][:n], batch["y"], reduction="none")
        rot = F.cross_entropy(out["rotation"][n:], batch["rot"], reduction="none")
        feats = out["features"][:n] if features else None
        return TaskLosses(main, rot.unsqueeze(1), out["main"][:n], feats)


class RegressionAuxTask(AuxTask):
    """Auxiliary regression targets carried as extra columns of y (the synthetic helpful/harmful task)."""

    names = ("helpful", "harmful")
    heads = {"helpful": 1, "harmful": 1}

    def __init__(self, task: str = "regression") -> None:
        super().__init__(task)

    def losses(self, forward: ForwardFn, batch: Batch, features: bool = False) -> TaskLosses:
        x, y = batch["x"], batch["y"]
        out = forward(x, return_features=features) if features else forward(x)
        main = (out["main"].squeeze(-1) - y[:, 0]) ** 2
        aux = torch.stack([(out[n].squeeze(-1) - y[:, i + 1]) ** 2 for i, n in enumerate(self.names)], dim=1)
        return TaskLosses(main, aux, out["main"], out.get("features"))


def build_aux_task(aux_task: str, task: str) -> AuxTask:
    """The given auxiliary task named in the config (labels-learning methods bring their own)."""
    if aux_task == "targets":
        return RegressionAuxTask(task)
    if aux_task == "rotation":
        return RotationTask(task)
    return AuxTask(task)
