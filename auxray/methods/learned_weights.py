"""The cheap single-run task weightings: ARML (Shi et al., NeurIPS 2020) and Auto-lambda (Liu et al., TMLR 2022).
Both weigh given auxiliary tasks as L_main + sum_k w_k L_k and need no held-out set.

ARML sets its weights alpha (alpha >= 0, sum alpha = K, starting at 1 each: equal weights) so that the weighted
auxiliary gradient matches the main one, min ||g_main - sum_k alpha_k g_k||^2, by a projected SGD step (optional
Langevin noise) every ``hypergrad.every`` inner steps. The gradients are taken over **all the shared trunk's
parameters** (as GCS takes them): the heads are task-specific (an auxiliary loss gives the main head no gradient and
the main loss gives an auxiliary head none), so the trunk is where tasks meet, and a task that conflicts with the
main one in an early layer would look harmless from the last block alone. The K + 1 backward passes this costs
come once every ``every`` steps; on those steps they also serve the inner step (its trunk gradient is
g_main + sum_k alpha_k g_k), so only the K extra passes are paid. The gradients are all-reduced across workers
before alpha moves, so every worker takes the same step. One departure from the paper: the objective is divided by
||g_main||^2, so that ``outer.lr`` means the same whatever the model's and losses' scale.

Auto-lambda's weights lambda (starting at ``method.init_weight``, 0.1) follow the main loss on another training
batch after one virtual step of the inner optimizer (momentum and weight decay included) on the weighted loss, by
the finite-difference hypergradient (``hypergrad.method: fd``, MAXL-F's), with Adam at ``outer.lr``; lambda
may change sign, as in the paper. The hypergradient differentiates through the parameters ``hypergrad.params``
selects (all by default: the probes W +- e d cost two forwards whatever the subset, since dL_T/dlambda_k is the batch
mean of l_k). Across workers the virtual step follows the all-reduced gradient and d is all-reduced, so two workers
compute what one process would on all their batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from auxray.auxnets import LinearCombiner, RuleWeights
from auxray.hypergrad.weighting import gram, matching_gradient, project_scaled_simplex
from auxray.method_settings import GradientMatchingSettings, InitWeight
from auxray.method_specs import MethodSpec
from auxray.methods.aux_tasks import AuxiliaryTask
from auxray.methods.base import AuxFn, Batch, ForwardFn, InnerResult, main_mean
from auxray.methods.gradient_rules import Reduce
from auxray.methods.objectives import GivenAuxObjective, combined_inner
from auxray.methods.registry import ObjectiveInputs


class GradientMatchingRule:
    """ARML's step on alpha inside W's backward: on every ``every``-th inner step the main and per-task gradients
    on the shared trunk (all-reduced) give W's trunk gradient and one projected SGD step on alpha; on the others W
    takes the plain backward of the weighted loss (through the data-parallel model)."""

    def __init__(self, weights: RuleWeights, *, lr: float, every: int, noise: float, seed: int, learns: bool) -> None:
        self.weights, self.lr, self.every, self.noise, self.seed, self.learns = weights, lr, every, noise, seed, learns

    def _updates_at(self, step: int) -> bool:
        return self.learns and step % self.every == 0

    @property
    def reduces_itself(self) -> bool:
        """True on the steps that move alpha (the next call to backward): those all-reduce their own gradients."""
        return self._updates_at(int(self.weights.steps) + 1)

    def backward(self, result: InnerResult, model: nn.Module, all_reduce_mean: Reduce) -> dict[str, float]:
        self.weights.steps += 1
        if not self._updates_at(int(self.weights.steps)):
            result.loss.backward()
            return {}
        if result.main_per_sample is None or result.aux_per_sample is None:
            raise ValueError("ARML needs per-sample main and auxiliary losses")
        shared = [p for p in model.get_submodule("trunk").parameters() if p.requires_grad]
        heads = [p for n, p in model.named_parameters() if not n.startswith("trunk.") and p.requires_grad]
        losses = [main_mean(result.main_per_sample, result.labeled)]
        losses += [result.aux_per_sample[:, k].mean() for k in range(result.aux_per_sample.shape[1])]
        per_task = [_grad(loss, shared) for loss in losses]
        head_grads = _grad(result.loss, heads)
        flat = all_reduce_mean(tuple(g for task in per_task for g in task) + head_grads)
        n = len(shared)
        per_task = [flat[i * n : (i + 1) * n] for i in range(len(losses))]
        alpha = self.weights.weights
        for i, p in enumerate(shared):
            p.grad = per_task[0][i] + sum(a * task[i] for a, task in zip(alpha, per_task[1:]))
        for p, g in zip(heads, flat[len(losses) * n :]):
            p.grad = g
        matrix = gram(per_task)
        self.weights.weights.copy_(self._step(alpha, matrix))
        return {}

    def _step(self, alpha: Tensor, matrix: Tensor) -> Tensor:
        """One projected (Langevin) SGD step on alpha from the gradients' Gram matrix."""
        moved = alpha.double().cpu() - self.lr * matching_gradient(matrix, alpha.double().cpu())
        if self.noise:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.weights.steps))
            moved = moved + self.noise * math.sqrt(2 * self.lr) * torch.randn(moved.shape, generator=gen).double()
        return project_scaled_simplex(moved, float(alpha.numel())).to(alpha)


def _grad(loss: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """d loss / d params (zeros where unreached), keeping the graph for the next task's gradient."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads))


class LinearWeightsObjective(GivenAuxObjective):
    """L_T = mean(l_main over labelled rows) + mean over rows of sum_k w_k l_k, w read from the aux net."""

    learned = True

    def inner(self, forward: ForwardFn, aux: AuxFn | None, batch: Batch) -> InnerResult:
        return combined_inner(self.aux_task, forward, aux, batch)

    def task_weights(self, auxnet: nn.Module | None, result: InnerResult) -> dict[str, Tensor]:
        assert isinstance(auxnet, (RuleWeights, LinearCombiner))
        weights = auxnet.task_weights()
        return {n: weights[i] for i, n in enumerate(self.aux_task.names)}


class ArmlObjective(LinearWeightsObjective):
    """ARML: alpha set by its gradient rule (no outer steps, no held-out batch)."""

    hypergradient_steps = False

    def __init__(self, method: MethodSpec, aux_task: AuxiliaryTask, num_outputs: int, rule: GradientMatchingRule):
        super().__init__(method, aux_task, num_outputs, rule=rule)
        self.rule = rule

    def build_auxnet(self, model: nn.Module) -> nn.Module:
        return self.rule.weights

    def current_weights(self) -> Tensor:
        """alpha now (ForkableWeights: a fork/merge driver forks its branches around it)."""
        return self.rule.weights.weights.detach().to(torch.float64).clone()

    @contextmanager
    def pinned(self, weights: Tensor) -> Iterator[None]:
        """Inner steps at alpha = `weights`, alpha not moving and its step count not advancing, inside the scope
        (a fork/merge branch); then alpha, the count and learning as they were."""
        w = self.rule.weights
        if weights.shape != w.weights.shape or bool((weights < 0).any()):
            raise ValueError(f"need {len(self.aux_names)} non-negative task weights, got {weights.tolist()}")
        alpha, steps, learns = w.weights.clone(), w.steps.clone(), self.rule.learns
        w.weights.copy_(weights)
        self.rule.learns = False
        try:
            yield
        finally:
            w.weights.copy_(alpha)
            w.steps.copy_(steps)
            self.rule.learns = learns


AUTOLAMBDA_START = 0.1  # every task's initial weight in Auto-lambda (method.init_weight unset)


class AutoLambdaObjective(LinearWeightsObjective):
    """Auto-lambda: lambda (any sign, as in the paper) learned by the look-ahead hypergradient on training batches,
    the virtual step being the inner optimizer's own."""

    outer_on_train = True
    optimizer_look_ahead = True

    def __init__(self, method: MethodSpec, aux_task: AuxiliaryTask, num_outputs: int, init_weight: float) -> None:
        super().__init__(method, aux_task, num_outputs)
        self.init_weight = init_weight

    def build_auxnet(self, model: nn.Module) -> nn.Module:
        return LinearCombiner(len(self.aux_task.names), monotone=False, init_weight=self.init_weight)


def arml(method: MethodSpec, i: ObjectiveInputs) -> ArmlObjective:
    """ARML's gradient-matching weights (equal weights while hypergrad.enabled is false: its fixed twin)."""
    task, m = i.given_task(), i.settings(GradientMatchingSettings)
    rule = GradientMatchingRule(
        RuleWeights(len(task.names)),
        lr=i.cfg.outer.lr,
        every=i.cfg.hypergrad.every,
        noise=m.weight_noise,
        seed=i.cfg.trainer.seed,
        learns=i.cfg.hypergrad.enabled,
    )
    return ArmlObjective(method, task, i.outputs, rule)


def autolambda(method: MethodSpec, i: ObjectiveInputs) -> AutoLambdaObjective:
    """Auto-lambda's look-ahead weights (fixed at method.init_weight while hypergrad.enabled is false)."""
    start = i.settings(InitWeight).init_weight
    return AutoLambdaObjective(method, i.given_task(), i.outputs, AUTOLAMBDA_START if start is None else start)
