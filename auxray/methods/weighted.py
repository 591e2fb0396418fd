"""Fixed per-task weights: the main loss plus the given auxiliary losses under a weight vector that nothing
differentiates (method.task_weights, 1 for a task not named). Equal weights keep it; ForkMerge (Jiang et al.,
NeurIPS 2023) starts from it, and its fork/merge driver (auxray.train.forkmerge) pins the vector of each branch it
trains and logs the merge's effective weights itself (a branch's vector is not them)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor

from auxray.errors import UserError
from auxray.method_settings import TaskWeights
from auxray.method_specs import MethodSpec
from auxray.methods.aux_tasks import AuxiliaryTask
from auxray.methods.base import AuxFn, Batch, ForwardFn, InnerResult, main_mean
from auxray.methods.objectives import GivenAuxObjective, task_result
from auxray.methods.registry import ObjectiveInputs


class WeightedObjective(GivenAuxObjective):
    """L_T = mean(l_main) + sum_k w_k mean(l_k), with w a plain tensor (the given weights; the fork/merge driver
    pins each branch's)."""

    def __init__(
        self, method: MethodSpec, aux_task: AuxiliaryTask, num_outputs: int, given: Mapping[str, float]
    ) -> None:
        super().__init__(method, aux_task, num_outputs)
        unknown = sorted(set(given) - set(aux_task.names))
        if unknown:
            raise UserError(
                f"method.task_weights names {', '.join(unknown)}, not a task of this run "
                f"(its tasks: {', '.join(aux_task.names)})"
            )
        self.weights = torch.tensor([float(given.get(n, 1.0)) for n in aux_task.names], dtype=torch.float64)

    def current_weights(self) -> Tensor:
        """The given weights (ForkableWeights): what the run's own steps train with."""
        return self.weights.clone()

    @contextmanager
    def pinned(self, weights: Tensor) -> Iterator[None]:
        """Inner steps at `weights` (one per auxiliary task, non-negative) inside the scope; then the given ones."""
        if weights.shape != self.weights.shape or bool((weights < 0).any()):
            raise ValueError(f"need {len(self.aux_names)} non-negative task weights, got {weights.tolist()}")
        given, self.weights = self.weights, weights.detach().to(torch.float64).clone()
        try:
            yield
        finally:
            self.weights = given

    def inner(self, forward: ForwardFn, aux: AuxFn | None, batch: Batch) -> InnerResult:
        t = self.aux_task.losses(forward, batch)
        w = self.weights.to(t.aux.device, t.aux.dtype)
        loss = main_mean(t.main, t.labeled) + (t.aux * w).sum(dim=1).mean()
        return task_result(loss, t, self.aux_task.names)


def equal(method: MethodSpec, i: ObjectiveInputs) -> WeightedObjective:
    """Main plus auxiliary losses at fixed weights: 1 each unless method.task_weights says otherwise."""
    return WeightedObjective(method, i.given_task(), i.outputs, i.settings(TaskWeights).task_weights)


def forkmerge(method: MethodSpec, i: ObjectiveInputs) -> WeightedObjective:
    """ForkMerge: given auxiliary tasks under weights chosen by forking, training and merging branches."""
    return WeightedObjective(method, i.given_task(), i.outputs, i.settings(TaskWeights).task_weights)
