"""One training session, whoever starts it (the CLI, the reproduction, a Tune trial, a Ray Train worker): a
trainer, an optional restored state, and sinks that receive every epoch and the final summary. Where the
checkpoints go and who hears about the run is the sinks' business, not the loop's."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from auxray.train.diagnostics import label_counts
from auxray.train.loop import BilevelTrainer

Summary = dict[str, Any]


@dataclass(frozen=True)
class RunView:
    """The narrow view of a run that sinks, tracking and plots read: its record, not its internals."""

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
    state: Callable[[], dict[str, Any]]  # the full resumable state (checkpoint contents)
    best: Callable[[], dict[str, Any]]  # the best-on-validation weights, as best.pt holds them
    labels: Callable[[], tuple[Tensor, list[int]] | None] = field(default=lambda: None)  # label-assignment counts

    @property
    def done(self) -> bool:
        """True once every configured epoch has run."""
        return self.epoch >= self.epochs


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

    psi = trainer.objective.label_classes
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
        classes=list(trainer.data.classes or [str(c) for c in range(max(trainer.data.num_classes, 1))]),
        state=trainer.state_dict,
        best=best,
        labels=(lambda: (label_counts(trainer, trainer.data.train), list(psi))) if psi else (lambda: None),
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
        best, final = trainer.test(best=True), trainer.test(best=False)
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

    final: list[Summary] = []

    def on_epoch(t: BilevelTrainer, metrics: dict[str, Any]) -> None:
        summary = None
        if t.epoch >= t.cfg.trainer.epochs:
            summary = summarise(t, time.perf_counter() - t0, run_dir)
            final.append(summary)
        view = view_of(t)
        for sink in sinks:
            sink.epoch(view, metrics, summary)

    if trainer.epoch >= trainer.cfg.trainer.epochs and trainer.history:
        on_epoch(trainer, trainer.history[-1])
    else:
        trainer.callbacks.append(on_epoch)
        try:
            trainer.fit(last)
        finally:
            trainer.callbacks.remove(on_epoch)
    return final[-1] if final else summarise(trainer, time.perf_counter() - t0, run_dir)
