"""One training session, whoever starts it (the CLI, the reproduction, a Tune trial, a Ray Train worker): a
trainer, an optional restored state, and sinks that receive every epoch and the final summary. Where the
checkpoints go and who hears about the run is the sinks' business, not the loop's."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

from auxray.data import build_data
from auxray.train.collective import Collective, PhiUpdater
from auxray.train.diagnostics import LabelAssignment, label_assignment
from auxray.train.forkmerge import BranchRunner
from auxray.train.loop import BilevelTrainer

if TYPE_CHECKING:  # run_plan imports the sinks' module, which imports this one
    from auxray.train.run_plan import RunPlan

Summary = dict[str, Any]


@dataclass(frozen=True)
class RunView:
    """The narrow, read-only view of a run that sinks, tracking, plots and diagnostics read: its record (the
    per-epoch metrics hold the task weights and timing counters), not its internals."""

    method: str
    epochs: int  # the configured number of epochs
    epoch: int  # epochs done
    step: int
    rank: int
    history: list[dict[str, Any]]
    hypergrad_norms: list[tuple[int, float]]
    best_score: float  # best validation accuracy so far (negated MSE for regression)
    best_epoch: int
    classes: list[str]
    sizes: dict[str, int]  # images per split: train, outer, val, test
    device: str
    state: Callable[[], dict[str, Any]]  # the full resumable state (checkpoint contents)
    best: Callable[[], dict[str, Any]]  # the best-on-validation weights, as best.pt holds them
    # The label generator's sub-class assignment on the training images (None for other methods), computed at
    # most once per view however many sinks read it.
    labels: Callable[[], LabelAssignment | None] = field(default=lambda: None)

    @property
    def done(self) -> bool:
        """True once every configured epoch has run."""
        return self.epoch >= self.epochs


def build_trainer(
    plan: RunPlan,
    *,
    state: dict[str, Any] | None = None,
    collective: Collective | None = None,
    phi_updater: Callable[[nn.Module], PhiUpdater] | None = None,
    progress: bool = False,
) -> BilevelTrainer:
    """The trainer of a planned run on its data (the auxiliary table the plan read is not read again), restored
    from `state` when given: the one place a session is built, whoever runs it (this process, a Tune trial, a Ray
    Train worker)."""
    cfg = plan.cfg
    data = build_data(cfg.data, cfg.method.aux_tasks, plan.table)
    branches: Callable[[BilevelTrainer], BranchRunner] | None = None
    if cfg.scaling.branch_actors:  # Ray is imported only when a forking method's branches run on actors
        from auxray.train.ray_branches import RayBranches

        branches = RayBranches
    trainer = BilevelTrainer(
        cfg, data, collective=collective, phi_updater=phi_updater, progress=progress, branches=branches
    )
    if state is not None:
        trainer.load_state_dict(state)
    return trainer


def view_of(trainer: BilevelTrainer) -> RunView:
    """The RunView of a trainer at this moment."""
    cfg = trainer.cfg

    def best() -> dict[str, Any]:
        return {
            "model": trainer.best["state"],
            "epoch": trainer.best["epoch"],
            "auxnet": trainer.auxnet.state_dict() if trainer.auxnet is not None else None,
            "config": cfg.model_dump(mode="json"),
        }

    data = trainer.data
    labels = functools.cache(lambda: label_assignment(trainer, data.train) if trainer.objective.label_classes else None)
    return RunView(
        method=cfg.method.name,
        epochs=cfg.trainer.epochs,
        epoch=trainer.epoch,
        step=trainer.step,
        rank=trainer.collective.rank,
        history=list(trainer.history),
        hypergrad_norms=list(trainer.hypergrad_norms),
        best_score=float(trainer.best["val_accuracy"]),
        best_epoch=int(trainer.best["epoch"]),
        classes=list(data.classes or [str(c) for c in range(max(data.num_classes, 1))]),
        sizes={"train": len(data.train), "outer": len(data.outer), "val": len(data.val), "test": len(data.test)},
        device=str(trainer.device),
        state=trainer.state_dict,
        best=best,
        labels=labels,
    )


class Sink(Protocol):
    """Receives a session's progress. `epoch` runs after every epoch; on the last one `summary` holds the final
    result (test metrics of the best-on-validation weights) so that a sink may report both together."""

    def epoch(self, view: RunView, metrics: dict[str, Any], summary: Summary | None) -> None: ...


SinkFactory = Callable[[], Sink]  # a picklable recipe for a sink, opened where the run happens (rank 0)


def summarise(trainer: BilevelTrainer, seconds: float, run_dir: str | Path | None) -> Summary:
    """The one summary schema of every run: test metrics of the best-on-validation and of the final weights,
    the best validation score and epoch, counters, the epochs it was restored at, time and where its files are."""
    result: Summary = {"method": trainer.cfg.method.name, "epochs": trainer.epoch, "steps": trainer.step}
    if trainer.epoch >= trainer.cfg.trainer.epochs:
        best = trainer.test(best=True)
        # The last epoch's weights are the best ones when the best epoch is the last: one test pass, not two.
        final = best if trainer.best["epoch"] == trainer.epoch else trainer.test(best=False)
        if "accuracy" in best:
            result.update(test_accuracy=best["accuracy"], final_test_accuracy=final["accuracy"])
        else:
            result.update(test_mse=best["mse"], final_test_mse=final["mse"])
    if trainer.data.task == "regression":
        result["best_val_mse"] = -trainer.best["val_accuracy"]  # the score is negated MSE: higher is better
    else:
        result["best_val_accuracy"] = trainer.best["val_accuracy"]
    result["best_epoch"] = trainer.best["epoch"]
    result["resumed_from"] = list(trainer.resumed_from)
    if trainer.collective.world_size > 1:  # what a data-parallel run sent: all-reduces, and phi to the coordinator
        result["allreduce_bytes"] = trainer.collective.bytes_sent
        result["phi_bytes_sent"] = trainer.phi.bytes_sent if trainer.phi is not None else 0
    result["seconds"] = seconds
    result["run_dir"] = str(run_dir) if run_dir is not None else None
    return result


def run_session(
    trainer: BilevelTrainer, sinks: Sequence[Sink], *, run_dir: str | Path | None = None, until_epoch: int | None = None
) -> Summary:
    """Train from the trainer's current epoch, feeding every sink after each epoch; return the summary. A
    trainer restored after its last epoch only reports its final result again (a retried final report)."""
    t0 = time.perf_counter()
    last = min(trainer.cfg.trainer.epochs, until_epoch or trainer.cfg.trainer.epochs)

    summary: Summary | None = None

    def on_epoch(metrics: dict[str, Any]) -> None:
        nonlocal summary
        if trainer.epoch >= trainer.cfg.trainer.epochs:
            summary = summarise(trainer, time.perf_counter() - t0, run_dir)
        view = view_of(trainer)
        for sink in sinks:
            sink.epoch(view, metrics, summary)

    if trainer.epoch >= trainer.cfg.trainer.epochs and trainer.history:
        on_epoch(trainer.history[-1])
    while trainer.epoch < last:
        on_epoch(trainer.fit_epoch())
    return summary if summary is not None else summarise(trainer, time.perf_counter() - t0, run_dir)
