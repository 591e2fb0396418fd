"""A bi-level trainer's whole state as a checkpoint holds it, and its restore: W, phi, both optimizers, the schedule,
the pool's and the fork's positions, counters, RNG and history, so that a resumed run ends bit for bit where an
uninterrupted one does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from auxray.train.checkpoint import rng_state, set_rng_state

if TYPE_CHECKING:  # the trainer imports this module
    from auxray.train.loop import BilevelTrainer


def trainer_state(t: BilevelTrainer) -> dict[str, Any]:
    """Everything a resumed run needs (plain tensors, dicts and numbers: see auxray.train.checkpoint)."""
    return {
        "model": t.model.state_dict(),
        "auxnet": t.auxnet.state_dict() if t.auxnet is not None else None,
        "opt_w": t.opt_w.state_dict(),
        "sched_w": t.sched_w.state_dict(),
        "phi": t.phi.state_dict() if t.phi is not None else None,
        "pool": t.pool_iter.state_dict() if t.pool_iter is not None else None,
        "fork": t.fork.state_dict() if t.fork is not None else None,
        "outer": t.outer.state_dict() if t.outer is not None else None,
        "epoch": t.epoch,
        "step": t.step,
        "history": t.history,
        "hypergrad_norms": t.hypergrad_norms,
        "resumed_from": t.resumed_from,
        "best": t.best,
        "rng": rng_state(),
        "config": t.cfg.model_dump(mode="json"),
    }


def restore_trainer_state(t: BilevelTrainer, state: dict[str, Any]) -> None:
    """Load a state written by trainer_state into a trainer built from the same config."""
    t.model.load_state_dict(state["model"])
    if t.auxnet is not None and state["auxnet"] is not None:
        t.auxnet.load_state_dict(state["auxnet"])
    t.opt_w.load_state_dict(state["opt_w"])
    t.sched_w.load_state_dict(state["sched_w"])
    if t.phi is not None and state["phi"] is not None:
        t.phi.load_state_dict(state["phi"])
    if t.pool_iter is not None and state.get("pool") is not None:  # absent in older checkpoints
        t.pool_iter.load_state_dict(state["pool"])
        t.pool_stream = None
    if t.fork is not None:
        t.fork.load_state_dict(state["fork"])
    if t.outer is not None and state.get("outer") is not None:  # absent in older checkpoints
        t.outer.load_state_dict(state["outer"])
    t.epoch, t.step = state["epoch"], state["step"]
    t.history = list(state["history"])
    t.hypergrad_norms = list(state["hypergrad_norms"])
    t.resumed_from = [*state.get("resumed_from", []), int(state["epoch"])]  # absent in older checkpoints
    t.best = state["best"]
    set_rng_state(state["rng"])
