"""Fork, train, merge (ForkMerge, Jiang et al., NeurIPS 2023): task weights judged by the outer set after many
inner steps, not by the next step's loss, so a task that harms slowly is seen.

Every `method.merge_every` inner steps, counted across epochs (a period; the run's last period ends with its last
epoch), the primary net forks into branches with fixed task-weight vectors: the given weights (all 1, the trainer's
own run trains this branch), and per `method.fork_branches` main-only, each task dropped, each task raised. At the
period's end each other branch restarts from the state at the period's start and trains on the very same batches
(recorded as the period ran: memory grows with merge_every x the batch, and a checkpoint written inside a period
holds its start and its batches so far, so a resumed run is exact). The branches are then
merged into the convex combination of their parameters that scores best on the outer set, searched greedily (the
branches ranked by their own score, best first, each next one offered the shares of `method.merge_grid`), and the
next period forks from the merged net. As in the paper the branches' vectors stay fixed; the merge's coefficients
applied to them are the effective task weights of the period, which the run logs as its task weights.

A learned weighting can be forked the same way (``forkmerge_arml``): any objective that declares ForkableWeights.
Each period's branches are built around its weights at the period's start, each branch trains with the weights
pinned (nothing learned), and the run's own branch keeps learning; the merge picks parameters, not weights.

A branch that diverges (its outer loss not finite) gets no share of the merge, however its accuracy reads.

With `method.prune_steps` the run's first period is the paper's task-ranking pass instead: its branches are
main-only and the main task with each auxiliary task alone; a task whose branch scores below main-only's on the
outer set is dropped for the rest of the run (the run's own steps train at weight 0 for it, and so does every
later branch). The pass then merges as any period does. Without fork_branches it is the run's only merge.

BatchNorm running statistics and the inner optimizer's state (momentum, Adam moments) are merged with the same
coefficients as the parameters; the learning-rate schedule is the same in every branch.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from auxray.data import DataBundle, TensorData
from auxray.method_settings import Forking
from auxray.methods import Batch
from auxray.methods.base import ForkableWeights

logger = logging.getLogger(__name__)

Score = tuple[float, ...]  # higher is better, compared left to right


Snapshot = dict[str, Any]  # the net's, the inner optimizer's and the schedule's state_dict


class BranchRunner(Protocol):
    """Trains branches: each from the snapshot `start`, at its weight vector, on `batches` in order; returns their
    end snapshots in the order of `weights`. In this process (InProcessBranches) or on Ray actors
    (auxray.train.ray_branches), with the same results."""

    def train(self, start: Snapshot, weights: Sequence[Tensor], batches: Sequence[Batch]) -> list[Snapshot]: ...


class BranchHost(Protocol):
    """What the fork/merge driver asks of the trainer: its net, inner optimizer and schedule, one inner step, and
    an evaluation on a split."""

    @property
    def model(self) -> nn.Module: ...

    @property
    def opt_w(self) -> torch.optim.Optimizer: ...

    @property
    def sched_w(self) -> torch.optim.lr_scheduler.LRScheduler: ...

    @property
    def data(self) -> DataBundle: ...

    def inner_step(self, batch: Batch) -> dict[str, float]: ...

    def evaluate(self, data: TensorData, *, model: nn.Module | None = None) -> dict[str, float]: ...


def branch_weights(
    given: Tensor, names: Sequence[str], kinds: Sequence[str], raise_factor: float
) -> list[tuple[str, Tensor]]:
    """The branches' task-weight vectors, the given one first, duplicates dropped (dropping a task already at 0
    is the given branch again); raising a task at 0 gives it weight 1."""
    candidates = [("given", given.clone())]
    for kind in kinds:
        if kind == "main_only":
            candidates.append(("main_only", torch.zeros_like(given)))
        for k, name in enumerate(names):
            w = given.clone()
            if kind == "drop_each":
                w[k] = 0.0
                candidates.append((f"drop_{name}", w))
            elif kind == "raise_each":
                w[k] = given[k] * raise_factor if given[k] > 0 else 1.0
                candidates.append((f"raise_{name}", w))
    return distinct(candidates)


def ranking_weights(given: Tensor, names: Sequence[str]) -> list[tuple[str, Tensor]]:
    """The task-ranking pass's branches: the given weights, main-only, and the main task with each auxiliary task
    alone at its given weight (a task at 0 has none), duplicates dropped."""
    candidates = [("given", given.clone()), ("main_only", torch.zeros_like(given))]
    for k, name in enumerate(names):
        if given[k] > 0:
            w = torch.zeros_like(given)
            w[k] = given[k]
            candidates.append((f"only_{name}", w))
    return distinct(candidates)


def distinct(branches: Sequence[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    """The branches in order, each weight vector kept once (its first label)."""
    out: list[tuple[str, Tensor]] = []
    for label, w in branches:
        if not any(torch.equal(w, seen) for _, seen in out):
            out.append((label, w))
    return out


def combine(states: Sequence[Mapping[str, Any]], coeffs: Tensor) -> dict[str, Any]:
    """The convex combination sum_b coeffs[b] * states[b] of nested state dicts: floating tensors are combined
    (branches with coefficient 0 skipped); anything else, or a value equal in every branch, is the first's."""
    used = [b for b in range(len(states)) if float(coeffs[b]) > 0]

    def mix(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, Mapping):
            return {k: mix([v[k] for v in values]) for k in first}
        if isinstance(first, (list, tuple)) and first and isinstance(first[0], (Mapping, Tensor)):
            return type(first)(mix([v[i] for v in values]) for i in range(len(first)))
        if not isinstance(first, Tensor) or not first.is_floating_point():
            return first
        if all(torch.equal(first, v) for v in values[1:]):
            return first.clone()
        out = torch.zeros_like(first)
        for b in used:
            out += float(coeffs[b]) * values[b]
        return out

    return mix(list(states))


def outer_score(result: Mapping[str, float], metric: str) -> Score:
    """A merge candidate's score on the outer set (higher is better): accuracy then loss, or the loss alone; a
    candidate whose outer loss is not finite (a branch that diverged, or a mix with one) scores below every other,
    so the merge leaves it out rather than stop the run."""
    if not math.isfinite(result["loss"]):
        return (-math.inf,)
    if metric == "accuracy" and "accuracy" in result:
        return (result["accuracy"], -result["loss"])
    return (-result["loss"],)


def greedy_merge(n: int, score: Callable[[Tensor], Score], grid: Sequence[float]) -> tuple[Tensor, Score, list[Score]]:
    """Convex coefficients over n branches, their score and each branch's own score: rank the branches by their
    own score (ties keep the given order), start from the best, and offer each next one every share of `grid`,
    keeping a share only when it scores strictly better. Costs n + (n - 1) * len(grid) calls of score."""
    eye = torch.eye(n, dtype=torch.float64)
    single = [score(eye[b]) for b in range(n)]
    order = sorted(range(n), key=lambda b: single[b], reverse=True)
    coeffs, best = eye[order[0]], single[order[0]]
    for b in order[1:]:
        chosen = coeffs
        for share in grid:
            candidate = (1 - share) * coeffs + share * eye[b]
            s = score(candidate)
            if s > best:
                chosen, best = candidate, s
        coeffs = chosen
    return coeffs, best, single


def ranking_verdict(
    branches: Sequence[tuple[str, Tensor]], single: Sequence[Score]
) -> tuple[list[int], dict[int, float]]:
    """The ranking pass's verdict from its branches' own scores: the tasks whose branch (the main task with it
    alone) scores below main-only's, and for every task with a branch its lead over main-only (the scores' first
    components), both by task index."""
    vectors = [w for _, w in branches]
    main = next(b for b, w in enumerate(vectors) if not bool(w.any()))
    dropped, leads = [], {}
    for b, w in enumerate(vectors):
        support = w.nonzero().flatten().tolist()
        if len(support) == 1:
            leads[support[0]] = single[b][0] - single[main][0]
            if single[b] < single[main]:
                dropped.append(support[0])
    return sorted(dropped), leads


class InProcessBranches:
    """Trains branches one after another on the trainer itself (its net, optimizer, schedule and inner step), each
    with the objective pinned at the branch's weights."""

    def __init__(self, host: BranchHost, objective: ForkableWeights) -> None:
        self.host, self.objective = host, objective

    def train(self, start: Snapshot, weights: Sequence[Tensor], batches: Sequence[Batch]) -> list[Snapshot]:
        out = []
        for w in weights:
            restore(self.host, start)
            with self.objective.pinned(w):
                for batch in batches:
                    self.host.inner_step(batch)
            out.append(snapshot(self.host))
        return out


class ForkMerge:
    """The fork/merge driver a forking method's trainer holds: records each period's batches, then has the other
    branches trained on them (by `runner`) and merges."""

    def __init__(self, objective: ForkableWeights, settings: Forking, runner: BranchRunner) -> None:
        self.objective, self.settings, self.runner = objective, settings, runner
        self.keep = torch.ones(len(objective.aux_names), dtype=torch.float64)  # 0 for a task the ranking dropped
        self.rank_leads: dict[str, float] = {}  # each task's lead over main-only in the ranking pass
        self.merges = 0  # since the run began
        self.branches = self._fork()
        s = self.settings
        periods = branch_weights(self._given(), objective.aux_names, s.fork_branches, s.fork_raise)
        if len(self.branches) < 2 or (s.fork_branches and len(periods) < 2):
            raise ValueError("forkmerge needs at least two distinct branches; add a kind to method.fork_branches")
        self.weights = objective.current_weights()  # the effective task weights of the last merge
        self.pending: list[Batch] = []
        self._start: dict[str, Any] | None = None
        self.branch_steps = 0  # inner steps trained by branches other than the run's own, since the run began
        self._epoch = {"merges": 0, "seconds": 0.0, "branch_steps": 0}
        self._epoch_weights = torch.zeros_like(self.weights)  # the sum of this epoch's merges' effective weights

    @property
    def ranking(self) -> bool:
        """Whether the current period is the task-ranking pass (method.prune_steps: the run's first period)."""
        return self.settings.prune_steps > 0 and self.merges == 0

    @property
    def forking(self) -> bool:
        """Whether periods run now (not after a ranking pass that had no fork_branches to go on with)."""
        return self.ranking or bool(self.settings.fork_branches)

    @property
    def due(self) -> bool:
        """Whether the current period has run its steps (prune_steps for the ranking pass, else merge_every)."""
        steps = self.settings.prune_steps if self.ranking else self.settings.merge_every
        return self.forking and len(self.pending) >= steps

    def _given(self) -> Tensor:
        """The weights the run's own steps train with: the objective's, the tasks the ranking dropped at 0."""
        return self.objective.current_weights() * self.keep

    def _fork(self) -> list[tuple[str, Tensor]]:
        """The branches around the objective's weights now (fixed for a fixed weighting; a learned one's move),
        no branch training a task the ranking pass dropped."""
        s, names = self.settings, self.objective.aux_names
        if self.ranking:
            return ranking_weights(self._given(), names)
        return distinct(
            [(label, w * self.keep) for label, w in branch_weights(self._given(), names, s.fork_branches, s.fork_raise)]
        )

    def own_steps(self) -> AbstractContextManager[None]:
        """The scope of the run's own inner steps: pinned without the tasks the ranking pass dropped, if any."""
        return self.objective.pinned(self._given()) if bool((self.keep == 0).any()) else nullcontext()

    def record(self, host: BranchHost, batch: Batch) -> None:
        """Keep a batch of the period, first snapshotting the state the period starts from and forking around the
        weights it starts with; call before the step. Nothing once periods have stopped."""
        if not self.forking:
            return
        if not self.pending:
            self._start = snapshot(host)
            self.branches = self._fork()
        self.pending.append(batch)

    def merge(self, host: BranchHost) -> Tensor:
        """Train the other branches on the period's batches, merge all of them into the host, and return the
        merge's coefficients (one per branch, the given one first)."""
        if self._start is None:
            raise RuntimeError("merge called before any batch of the period was recorded")
        t0 = time.perf_counter()
        m, branches = self.settings, self.branches
        states = [snapshot(host), *self.runner.train(self._start, [w for _, w in branches[1:]], self.pending)]
        models = [s["model"] for s in states]

        def score(coeffs: Tensor) -> Score:
            host.model.load_state_dict(combine(models, coeffs))
            return outer_score(host.evaluate(host.data.outer), m.merge_metric)

        coeffs, _, single = greedy_merge(len(states), score, m.merge_grid)
        merged = combine(states, coeffs)
        restore(host, {**merged, "sched": states[0]["sched"]})
        # The run's own branch ends at the objective's weights now (a learned weighting moved them in the period).
        vectors = [self._given(), *(w for _, w in branches[1:])]
        self.weights = torch.stack(vectors).T @ coeffs
        self._epoch_weights += self.weights
        if self.ranking:
            self._prune(single)
        steps = len(self.pending) * (len(branches) - 1)
        self.merges += 1
        self.branch_steps += steps
        self._epoch["merges"] += 1
        self._epoch["branch_steps"] += steps
        self._epoch["seconds"] += time.perf_counter() - t0
        self.pending, self._start = [], None
        return coeffs

    def _prune(self, single: Sequence[Score]) -> None:
        """Drop the tasks the ranking pass's branches rank below main-only; without fork_branches to go on with,
        the weights the run trains with from now on become its effective weights."""
        names = self.objective.aux_names
        dropped, leads = ranking_verdict(self.branches, single)
        self.keep[dropped] = 0.0
        self.rank_leads = {names[k]: lead for k, lead in leads.items()}
        if not self.settings.fork_branches:
            self.weights = self._given()
        ranked = ", ".join(f"{n} {lead:+.4f}" for n, lead in self.rank_leads.items())
        logger.info(
            "task ranking (lead over main-only): %s; dropped: %s", ranked, [names[k] for k in dropped] or "none"
        )

    def epoch_metrics(self) -> dict[str, float]:
        """This epoch's merges, their seconds and extra branch steps, and the mean of its merges' effective task
        weights (the last merge's in an epoch without one); the counters restart."""
        out = {f"fork_{k}": float(v) for k, v in self._epoch.items()}
        merges = self._epoch["merges"]
        mean = self._epoch_weights / merges if merges else self.weights
        out.update({f"task_weight/{n}": float(w) for n, w in zip(self.objective.aux_names, mean)})
        if self.settings.prune_steps:
            out.update({f"fork_kept/{n}": float(k) for n, k in zip(self.objective.aux_names, self.keep)})
            out.update({f"fork_rank_lead/{n}": lead for n, lead in self.rank_leads.items()})
        self._epoch = {"merges": 0, "seconds": 0.0, "branch_steps": 0}
        self._epoch_weights = torch.zeros_like(self.weights)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The effective weights and counters, and a period in flight: the state it started from, its branches and
        its batches so far (None between periods)."""
        period = None
        if self._start is not None:
            labels = [label for label, _ in self.branches]
            vectors = torch.stack([w for _, w in self.branches])
            period = {"start": self._start, "labels": labels, "weights": vectors, "batches": list(self.pending)}
        return {
            "weights": self.weights.clone(),
            "merges": self.merges,
            "branch_steps": self.branch_steps,
            "period": period,
            "keep": self.keep.clone(),
            "rank_leads": dict(self.rank_leads),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what state_dict wrote."""
        self.weights = state["weights"].clone()
        self.merges, self.branch_steps = int(state["merges"]), int(state["branch_steps"])
        # Absent in checkpoints from before the ranking pass: nothing was dropped.
        self.keep = state.get("keep", torch.ones_like(self.keep)).clone()
        self.rank_leads = dict(state.get("rank_leads", {}))
        period = state.get("period")  # absent in checkpoints from before periods spanned epochs
        self._start, self.pending = None, []
        if period is not None:
            self._start = copy.deepcopy(period["start"])
            self.branches = [(str(label), w.clone()) for label, w in zip(period["labels"], period["weights"])]
            self.pending = [dict(b) for b in period["batches"]]


def snapshot(host: BranchHost) -> Snapshot:
    """Copies of the net's, the inner optimizer's and the schedule's state."""
    return copy.deepcopy(
        {"model": host.model.state_dict(), "opt": host.opt_w.state_dict(), "sched": host.sched_w.state_dict()}
    )


def restore(host: BranchHost, state: Mapping[str, Any]) -> None:
    """Load a snapshot back into the host (copies, so the snapshot can be loaded again)."""
    host.model.load_state_dict(state["model"])
    host.opt_w.load_state_dict(copy.deepcopy(state["opt"]))
    host.sched_w.load_state_dict(copy.deepcopy(state["sched"]))
