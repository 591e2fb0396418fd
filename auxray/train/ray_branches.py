"""A forking method's branches on Ray actors (scaling.branch_actors): each actor holds a trainer of the run's own
config, so a branch is trained by the very code that trains it in the run's process (InProcessBranches), and the
results are the same given the same device and torch threads (trainer.threads)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from auxray.config import RunConfig
from auxray.data import DataBundle
from auxray.methods import Batch
from auxray.methods.base import ForkableWeights
from auxray.train.forkmerge import InProcessBranches, Snapshot
from auxray.train.loop import BilevelTrainer
from auxray.train.ray_cluster import ensure_ray


class BranchActor:
    """One Ray actor's trainer: builds the run's net, objective, optimizer and schedule, and trains branches."""

    def __init__(self, cfg: dict[str, Any], data: DataBundle) -> None:
        run = RunConfig.model_validate(cfg)
        run.scaling.branch_actors = 0  # the actor trains its branches itself
        self.trainer = BilevelTrainer(run, data, progress=False)
        objective = self.trainer.objective
        if not isinstance(objective, ForkableWeights):
            raise ValueError(f"{objective.name} forks branches but its objective has no task-weight vector")
        self.runner = InProcessBranches(self.trainer, objective)

    def train(self, start: Snapshot, weights: Sequence[Tensor], batches: Sequence[Batch]) -> list[Snapshot]:
        return self.runner.train(start, weights, batches)


def shapes_only(data: DataBundle, rows: int) -> DataBundle:
    """The data cut to its first `rows` rows per split: what a trainer needs to build the same net (class count,
    channels, columns), without shipping every image to each actor (the batches come with each call)."""

    def head(split: Any) -> Any:
        return split.subset(list(range(min(rows, len(split))))) if split is not None else None

    return dataclasses.replace(
        data,
        train=head(data.train),
        outer=head(data.outer),
        val=head(data.val),
        test=head(data.test),
        unlabeled=head(data.unlabeled),
    )


class RayBranches:
    """A BranchRunner over `scaling.branch_actors` actors (built from the trainer, as BilevelTrainer's `branches`
    asks): branch i goes to actor i mod n, all at once."""

    def __init__(self, trainer: BilevelTrainer) -> None:
        import ray

        s = trainer.cfg.scaling
        ensure_ray(s.address, log_to_driver=False)
        data = ray.put(shapes_only(trainer.data, trainer.cfg.trainer.batch_size))
        actor = ray.remote(BranchActor).options(num_cpus=1, num_gpus=s.gpus_per_worker)
        self.actors: list[Any] = [
            actor.remote(trainer.cfg.model_dump(mode="json"), data) for _ in range(s.branch_actors)
        ]

    def train(self, start: Snapshot, weights: Sequence[Tensor], batches: Sequence[Batch]) -> list[Snapshot]:
        import ray

        start_ref, batches_ref = ray.put(start), ray.put(list(batches))
        calls = [
            self.actors[i % len(self.actors)].train.remote(start_ref, [w], batches_ref) for i, w in enumerate(weights)
        ]
        return [state for states in ray.get(calls) for state in states]
