"""The shape every method shares: an inner loss L_T(W, phi) and an outer loss L_A(W) over batches."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auxray.data.tensors import UNLABELED

if TYPE_CHECKING:  # gradient_rules imports InnerResult from this module
    from auxray.methods.gradient_rules import GradientRule

Batch = dict[str, Tensor]  # "x", "y" and whatever the aux task prepared once per batch
ForwardFn = Callable[..., dict[str, Tensor]]
AuxFn = Callable[..., Tensor]


@dataclass
class InnerResult:
    """One evaluation of the inner objective and what to log about it."""

    loss: Tensor
    main_loss: Tensor
    logits: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    task_weights: dict[str, Tensor] = field(default_factory=dict)
    main_per_sample: Tensor | None = None
    aux_per_sample: Tensor | None = None
    # Which rows of main_per_sample have a main label (None: all), so a rule that takes the main loss apart
    # (GCS) averages it over those rows only, as the inner loss does.
    labeled: Tensor | None = None
    # A term of the outer objective on phi alone (MAXL's label-entropy term), computed from this pass's aux-net
    # outputs so the hypergradient adds its gradient without another aux-net forward; None when there is none.
    regulariser: Tensor | None = None


class Objective(Protocol):
    """A method's losses, written against forward callables so that the same code serves the
    ordinary inner step (modules) and the hyperstep (torch.func.functional_call over W and phi)."""

    name: str
    heads: dict[str, int]
    learned: bool
    uses_unlabeled: bool  # its inner loss trains on images without a main label (their main loss masked)
    aux_names: tuple[str, ...]  # the columns of InnerResult.aux_per_sample
    trains_with_primary: bool  # the aux net's parameters are trained with W by the inner optimizer (not bi-level)
    label_classes: tuple[int, ...] | None  # learned sub-classes per class (label generators), else None
    gradient_rule: GradientRule  # how an inner result becomes W's gradients
    # A learned aux net is trained by the loop's outer steps (hypergradients); False: its gradient rule sets the
    # weights itself inside W's backward (ARML), and the loop takes no outer steps.
    hypergradient_steps: bool
    outer_on_train: bool  # the outer loss is on another training batch, not the held-out outer set (Auto-lambda)
    # An unrolled or finite-difference look-ahead steps along the inner optimizer's own direction (momentum and
    # weight decay included: Auto-lambda), not along the plain gradient (MAXL).
    optimizer_look_ahead: bool

    def build_auxnet(self, model: nn.Module) -> nn.Module | None: ...

    def prepare(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Batch: ...

    def inner(self, forward: ForwardFn, aux: AuxFn | None, batch: Batch) -> InnerResult: ...

    def outer(self, forward: ForwardFn, batch: Batch) -> Tensor: ...

    def task_weights(self, auxnet: nn.Module | None, result: InnerResult) -> dict[str, Tensor]:
        """Learned task weights that are not a by-product of the inner loss (read once an epoch, for logs)."""
        ...


@runtime_checkable
class ForkableWeights(Protocol):
    """What a fork/merge driver (auxray.train.forkmerge) asks of an objective that weighs its auxiliary tasks by one
    vector: that vector now, and a scope in which the inner steps train at another vector with nothing learned
    (a branch), the objective's own state restored when it ends."""

    aux_names: tuple[str, ...]

    def current_weights(self) -> Tensor:
        """The task-weight vector (float64, one per auxiliary task) the run's own inner steps train with now."""
        ...

    def pinned(self, weights: Tensor) -> AbstractContextManager[None]:
        """Train at `weights` (non-negative, one per task) inside the scope, learning nothing; then restore."""
        ...


def main_loss(logits: Tensor, y: Tensor, task: str) -> Tensor:
    """Per-sample main-task loss: cross-entropy for classification (0 for an unlabelled row), squared error for
    regression."""
    if task == "regression":
        return (logits.squeeze(-1) - y) ** 2
    return F.cross_entropy(logits, y, reduction="none", ignore_index=UNLABELED)


def main_target(y: Tensor, task: str) -> Tensor:
    """The main-task column of the targets: targets may carry auxiliary columns after it (regression targets,
    or class labels with per-image auxiliary labels, the class then stored as a float)."""
    if y.dim() == 1:
        return y
    return y[:, 0] if task == "regression" else y[:, 0].long()


def labeled_rows(y: Tensor, task: str) -> Tensor | None:
    """Which rows have a main label (None: all of them, as in regression)."""
    return main_target(y, task) != UNLABELED if task == "classification" else None


def main_mean(per_sample: Tensor, labeled: Tensor | None) -> Tensor:
    """The main loss of a batch: the mean over the rows with a main label (unlabelled rows add nothing)."""
    if labeled is None:
        return per_sample.mean()
    return per_sample.sum() / labeled.sum().clamp(min=1)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Fraction of correct top-1 predictions among the rows with a label."""
    labeled = y != UNLABELED
    return (logits.argmax(dim=-1) == y)[labeled].float().mean() if bool(labeled.any()) else logits.new_zeros(())


class MainOuterMixin:
    """Outer loss shared by all methods (the main-task loss on a held-out batch) and their common defaults."""

    task: str = "classification"
    trains_with_primary: bool = False
    uses_unlabeled: bool = False
    hypergradient_steps: bool = True
    outer_on_train: bool = False
    optimizer_look_ahead: bool = False
    label_classes: tuple[int, ...] | None = None

    def outer(self, forward: ForwardFn, batch: Batch) -> Tensor:
        return main_loss(forward(batch["x"])["main"], main_target(batch["y"], self.task), self.task).mean()

    def task_weights(self, auxnet: nn.Module | None, result: InnerResult) -> dict[str, Tensor]:
        return {}
