"""Given auxiliary tasks: what each adds to a batch and the per-sample losses it yields. Built-in ones (rotation,
consistency, pseudo-labels, noise labels, table columns, regression targets; see view_tasks for the ones that
combine) and a user's own, named by import path in a config or passed as a callable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from auxray.importpath import is_import_path, resolve_callable
from auxray.methods.base import Batch, ForwardFn, labeled_rows, main_loss, main_target
from auxray.methods.view_tasks import AuxLoss, TaskContext, build_parts


@dataclass
class TaskLosses:
    """Per-sample losses of one forward pass: main [B] (0 where a row has no main label), auxiliaries [B, n_aux],
    main logits, features, and which rows have a main label (None: all)."""

    main: Tensor
    aux: Tensor
    logits: Tensor
    features: Tensor | None
    labeled: Tensor | None = None


@runtime_checkable
class AuxiliaryTask(Protocol):
    """What an objective asks of a given auxiliary task: its heads on the primary net, the batch it prepares once
    per step, and the per-sample main and auxiliary losses of one forward pass."""

    names: tuple[str, ...]  # one per column of TaskLosses.aux
    heads: dict[str, int]  # extra heads of the primary net: name -> outputs
    task: str  # the main task: "classification" or "regression"

    def prepare(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Batch: ...

    def losses(self, forward: ForwardFn, batch: Batch, features: bool = False) -> TaskLosses: ...


# A user's task factory, called with the main task ("classification" or "regression").
AuxTaskFactory = Callable[[str], AuxiliaryTask]
# An auxiliary task: a built-in name, an import path "package.module:factory", or a factory itself.
AuxTaskSpec = str | AuxTaskFactory
# A user's per-sample auxiliary losses: (the primary net's outputs by head, the prepared batch) -> [B] or [B, n_aux].
AuxLossFn = Callable[[dict[str, Tensor], Batch], Tensor]
PrepareFn = Callable[[Tensor, Tensor, torch.Generator | None], Batch]


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
        return TaskLosses(
            main,
            main.new_zeros(main.shape[0], 0),
            out["main"],
            out.get("features"),
            labeled_rows(batch["y"], self.task),
        )


class ViewTasks(AuxTask):
    """Built-in auxiliary losses trained together (rotation, consistency, pseudo-labels, noise labels, table
    columns): each adds its views of the images ("x_*" keys) and targets to the batch, and one forward pass over
    the images and every view gives the main loss (on the images) and one loss per task."""

    def __init__(self, parts: list[AuxLoss], task: str = "classification") -> None:
        super().__init__(task)
        self.parts = parts
        self.names = tuple(p.name for p in parts)
        self.heads = {h: n for p in parts for h, n in p.heads.items()}

    def prepare(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Batch:
        batch: Batch = {"x": x, "y": y}
        for part in self.parts:
            part.prepare(batch, generator)
        return batch

    def losses(self, forward: ForwardFn, batch: Batch, features: bool = False) -> TaskLosses:
        views = [k for k in batch if k == "x" or k.startswith("x_")]
        inputs = torch.cat([batch[k] for k in views], dim=0)
        out = forward(inputs, return_features=features) if features else forward(inputs)
        n = batch["x"].shape[0]
        outs = {v: {h: t[i * n : (i + 1) * n] for h, t in out.items()} for i, v in enumerate(views)}
        main = main_loss(outs["x"]["main"], main_target(batch["y"], self.task), self.task)
        aux = torch.stack([part.loss(outs, batch) for part in self.parts], dim=1)
        labeled = labeled_rows(batch["y"], self.task)
        return TaskLosses(main, aux, outs["x"]["main"], outs["x"].get("features"), labeled)


class RegressionAuxTask(AuxTask):
    """Auxiliary regression targets carried as extra columns of y (the synthetic helpful/harmful task)."""

    names: tuple[str, ...] = ("helpful", "harmful")
    heads = {"helpful": 1, "harmful": 1}

    def __init__(self, task: str = "regression") -> None:
        super().__init__(task)

    def losses(self, forward: ForwardFn, batch: Batch, features: bool = False) -> TaskLosses:
        x, y = batch["x"], batch["y"]
        out = forward(x, return_features=features) if features else forward(x)
        main = (out["main"].squeeze(-1) - y[:, 0]) ** 2
        aux = torch.stack([(out[n].squeeze(-1) - y[:, i + 1]) ** 2 for i, n in enumerate(self.names)], dim=1)
        return TaskLosses(main, aux, out["main"], out.get("features"), None)


class LossFnTask(AuxTask):
    """A user's auxiliary task from a callable giving per-sample losses: ``loss(outputs, batch)`` returns ``[B]``
    (one task) or ``[B, len(heads)]``, where ``outputs`` holds the logits of every head (``"main"`` and ``heads``)
    for ``batch["x"]``. ``prepare(x, y, generator)``, if given, builds the batch (it must keep ``"x"`` and ``"y"``),
    e.g. to add targets derived from the images."""

    def __init__(
        self, heads: dict[str, int], loss: AuxLossFn, *, task: str = "classification", prepare: PrepareFn | None = None
    ) -> None:
        super().__init__(task)
        if not heads or "main" in heads:
            raise ValueError(f"an auxiliary task needs at least one head and none called 'main', got {sorted(heads)}")
        self.heads = dict(heads)
        self.names = tuple(heads)
        self.loss_fn, self.prepare_fn = loss, prepare

    def prepare(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Batch:
        return self.prepare_fn(x, y, generator) if self.prepare_fn is not None else {"x": x, "y": y}

    def losses(self, forward: ForwardFn, batch: Batch, features: bool = False) -> TaskLosses:
        out = forward(batch["x"], return_features=features) if features else forward(batch["x"])
        main = main_loss(out["main"], main_target(batch["y"], self.task), self.task)
        aux = self.loss_fn(out, batch)
        aux = aux.unsqueeze(1) if aux.dim() == 1 else aux
        if tuple(aux.shape) != (main.shape[0], len(self.names)):
            raise ValueError(
                f"auxiliary loss of {self.names} has shape {tuple(aux.shape)}, expected "
                f"[{main.shape[0]}, {len(self.names)}] (one loss per sample and task)"
            )
        return TaskLosses(main, aux, out["main"], out.get("features"), labeled_rows(batch["y"], self.task))


BUILTIN_TASKS: dict[str, AuxTaskFactory] = {
    "targets": RegressionAuxTask,
    "none": AuxTask,
    "labels": AuxTask,
}


def build_aux_task(spec: AuxTaskSpec | list[str], task: str, context: TaskContext | None = None) -> AuxiliaryTask:
    """The given auxiliary task a config names (labels-learning methods bring their own): a built-in name or a
    list of combinable ones (built with what `context` says about the data), an import path
    ``"package.module:factory"`` or a factory callable, called as ``factory(task)``."""
    names = [spec] if isinstance(spec, str) else spec if isinstance(spec, list) else None
    if names is not None and names[0] not in BUILTIN_TASKS and not is_import_path(names[0]):
        return ViewTasks(build_parts(names, context or TaskContext()), task)
    if isinstance(spec, list):
        raise ValueError(f"a list of auxiliary tasks takes built-in ones only, got {spec}")
    if callable(spec):
        factory = spec
    elif spec in BUILTIN_TASKS:
        factory = BUILTIN_TASKS[spec]
    elif is_import_path(spec):
        factory = resolve_callable(spec)
    else:
        raise ValueError(
            f"unknown auxiliary task {spec!r}; choose one of {', '.join(BUILTIN_TASKS)}, "
            "or name your own as 'package.module:factory'"
        )
    made = factory(task)
    if not isinstance(made, AuxiliaryTask):
        raise TypeError(
            f"auxiliary task {spec!r} must return an AuxiliaryTask (names, heads, task, prepare, "
            f"losses), got {type(made).__name__}"
        )
    return made
