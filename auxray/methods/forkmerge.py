"""ForkMerge's objective (Jiang et al., NeurIPS 2023): the main loss plus the given auxiliary losses under a
per-task weight vector that nothing differentiates. The trainer's fork/merge driver (auxray.train.forkmerge) sets
the vector of each branch it trains and logs the merge's effective weights itself (a branch's vector is not them)."""

from __future__ import annotations

import torch
from torch import Tensor

from auxray.method_specs import MethodSpec
from auxray.methods.aux_tasks import AuxiliaryTask
from auxray.methods.base import AuxFn, Batch, ForwardFn, InnerResult, main_mean
from auxray.methods.objectives import GivenAuxObjective, task_result
from auxray.methods.registry import ObjectiveInputs


class WeightedObjective(GivenAuxObjective):
    """L_T = mean(l_main) + sum_k w_k mean(l_k), with w a plain tensor the fork/merge driver sets (every weight
    starts at 1: equal weights, the method's fixed twin)."""

    def __init__(self, method: MethodSpec, aux_task: AuxiliaryTask, num_outputs: int) -> None:
        super().__init__(method, aux_task, num_outputs)
        self.weights = torch.ones(len(aux_task.names), dtype=torch.float64)

    def set_weights(self, weights: Tensor) -> None:
        """Use `weights` (one per auxiliary task, non-negative) from the next inner step on."""
        if weights.shape != self.weights.shape or bool((weights < 0).any()):
            raise ValueError(f"need {len(self.aux_names)} non-negative task weights, got {weights.tolist()}")
        self.weights = weights.detach().to(torch.float64).clone()

    def inner(self, forward: ForwardFn, aux: AuxFn | None, batch: Batch) -> InnerResult:
        t = self.aux_task.losses(forward, batch)
        w = self.weights.to(t.aux.device, t.aux.dtype)
        loss = main_mean(t.main, t.labeled) + (t.aux * w).sum(dim=1).mean()
        return task_result(loss, t, self.aux_task.names)


def forkmerge(method: MethodSpec, i: ObjectiveInputs) -> WeightedObjective:
    """ForkMerge: given auxiliary tasks under weights chosen by forking, training and merging branches."""
    return WeightedObjective(method, i.given_task(), i.outputs)
