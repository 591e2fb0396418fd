"""Auxiliary losses that train together on labelled and unlabelled images alike: rotation, consistency,
pseudo-labels (FixMatch), and per-image labels carried with the data (noise labels, table columns). Each adds
its views of the images and its targets to the batch once per step; ``aux_tasks.ViewTasks`` runs one forward
pass over every view and asks each for its per-sample loss."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from auxray.data.aux_table import ColumnGroup
from auxray.data.rotation import rotate_batch
from auxray.data.transforms import rand_augment, random_crop_flip

Outputs = dict[str, dict[str, Tensor]]  # view ("x", "x_rot", ...) -> head -> logits for that view's rows


class AuxLoss(Protocol):
    """One auxiliary loss among several that share a forward pass."""

    name: str
    heads: dict[str, int]  # heads it adds to the primary net (may be none: it reads the main head)

    def prepare(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> None:
        """Add the views ("x_*", each a tensor like batch["x"]) and targets this loss needs, once per step."""
        ...

    def loss(self, outs: Outputs, batch: dict[str, Tensor]) -> Tensor:
        """Per-sample loss [B] from the outputs on every view."""
        ...


@dataclass(frozen=True)
class TaskContext:
    """What the built-in tasks need to know about the data: the main classes, the per-image label columns in
    y[:, 1:] and the pseudo-label confidence threshold."""

    num_classes: int = 10
    groups: Sequence[ColumnGroup] = field(default_factory=tuple)
    pseudo_threshold: float = 0.95


class RotationLoss:
    """Predict the rotation (0/90/180/270 degrees) of each image (Gidaris et al., 2018)."""

    name = "rotation"
    heads = {"rotation": 4}

    def prepare(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> None:
        batch["x_rot"], batch["rot"] = rotate_batch(batch["x"], generator=generator)

    def loss(self, outs: Outputs, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(outs["x_rot"]["rotation"], batch["rot"], reduction="none")


class ConsistencyLoss:
    """Two augmentations of an image should get the same prediction (the Pi-model): the squared distance between
    the class probabilities on a second random crop and flip and those on the image, the latter held fixed."""

    name = "consistency"
    heads: dict[str, int] = {}

    def prepare(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> None:
        batch["x_twin"] = random_crop_flip(batch["x"], generator)

    def loss(self, outs: Outputs, batch: dict[str, Tensor]) -> Tensor:
        target = outs["x"]["main"].detach().softmax(dim=-1)
        return (outs["x_twin"]["main"].softmax(dim=-1) - target).pow(2).sum(dim=-1)


class PseudoLabelLoss:
    """FixMatch's pseudo-labels: the class predicted on the (weakly augmented) image is the target for a
    RandAugment view of it, where that prediction's confidence reaches the threshold."""

    name = "pseudo_labels"
    heads: dict[str, int] = {}

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def prepare(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> None:
        batch["x_strong"] = rand_augment(batch["x"], generator)

    def loss(self, outs: Outputs, batch: dict[str, Tensor]) -> Tensor:
        confidence, target = outs["x"]["main"].detach().softmax(dim=-1).max(dim=-1)
        kept = (confidence >= self.threshold).to(confidence.dtype)
        return F.cross_entropy(outs["x_strong"]["main"], target, reduction="none") * kept


class ColumnLoss:
    """A task whose labels come with each image in y[:, 1:] (noise labels, table columns); a missing value (NaN)
    adds nothing, per sample and per column. Binary: mean of the columns' logistic losses; categorical:
    cross-entropy; regression: Huber loss on the standardised columns (squared error within one standard
    deviation, absolute beyond), whose gradient is bounded as a classification head's is: with squared error a
    linear head on the trunk's unnormalised features diverges at the primary's learning rate (seen: ConvNet-4,
    lr 0.03, the loss at 1e17 by the seventh step)."""

    heads: dict[str, int]

    def __init__(self, group: ColumnGroup) -> None:
        self.group, self.name = group, group.name
        width = group.stop - group.start
        self.heads = {group.name: group.classes if group.kind == "categorical" and group.classes else width}

    def prepare(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> None:
        return None

    def loss(self, outs: Outputs, batch: dict[str, Tensor]) -> Tensor:
        g = self.group
        target = batch["y"][:, 1 + g.start : 1 + g.stop].to(outs["x"][g.name].dtype)
        present = ~torch.isnan(target)
        filled = torch.where(present, target, torch.zeros_like(target))
        logits = outs["x"][g.name]
        if g.kind == "categorical":
            ce = F.cross_entropy(logits, filled[:, 0].long(), reduction="none")
            return ce * present[:, 0].to(ce.dtype)
        if g.kind == "binary":
            per = F.binary_cross_entropy_with_logits(logits, filled, reduction="none")
        else:
            per = F.huber_loss(logits, filled, reduction="none", delta=1.0)
        per = per * present.to(per.dtype)
        return per.sum(dim=1) / present.sum(dim=1).clamp(min=1).to(per.dtype)


def build_parts(names: Sequence[str], context: TaskContext) -> list[AuxLoss]:
    """The losses a list of built-in task names makes; "table" gives one per declared table task."""
    groups = {g.name: g for g in context.groups}
    table = [g for g in context.groups if g.name != "noise_labels"]
    parts: list[AuxLoss] = []
    for name in names:
        if name == "rotation":
            parts.append(RotationLoss())
        elif name == "consistency":
            parts.append(ConsistencyLoss())
        elif name == "pseudo_labels":
            parts.append(PseudoLabelLoss(context.pseudo_threshold))
        elif name == "noise_labels" and name in groups:
            parts.append(ColumnLoss(groups[name]))
        elif name == "table" and table:
            parts += [ColumnLoss(g) for g in table]
        elif name in ("noise_labels", "table"):
            raise ValueError(f"auxiliary task {name!r} needs its per-image labels in the data (build_data)")
        else:
            raise ValueError(
                f"unknown auxiliary task {name!r}; choose one of none, targets, labels, rotation, consistency, "
                "pseudo_labels, noise_labels, table, or name your own as 'package.module:factory'"
            )
    return parts
