"""One outer step of a trainer timed phase by phase, on batches chosen by a seed: what `auxray bench overhead`
measures (auxray.bench.outer_breakdown) and what tests use to take a hypergradient on real batches."""

from __future__ import annotations

import copy

import torch

from auxray.data import BatchIterator
from auxray.methods import Batch
from auxray.train.hyperstep import PhaseTimer
from auxray.train.loop import BilevelTrainer


def example_batches(trainer: BilevelTrainer, seed: int) -> tuple[Batch, Batch]:
    """A prepared (training batch, outer batch) pair chosen by ``seed``, drawn as training draws them (the pool's
    unlabelled rows included), from copies of the trainer's iterators so that its own are left as they are."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    train_iter = copy.copy(trainer.train_iter)
    train_iter.set_epoch(seed)
    x, y = next(iter(train_iter))
    outer_iter = BatchIterator(
        trainer.data.outer,
        trainer.cfg.trainer.batch_size,
        shuffle=True,
        seed=seed,
        drop_last=False,
        augment=False,
        device=trainer.device,
    )
    ox, oy = next(iter(outer_iter))
    if trainer.pool_iter is not None:  # the training batch takes unlabelled rows too, as in training
        pool = BatchIterator(
            trainer.pool_iter.data,
            trainer.pool_iter.batch_size,
            shuffle=True,
            seed=seed,
            augment=trainer.pool_iter.augment,
            device=trainer.device,
        )
        xu, yu = next(iter(pool))
        x, y = torch.cat([x, xu]), torch.cat([y, yu])
    return trainer.prepare(x, y, gen), trainer.prepare(ox, oy, gen)


def outer_step_breakdown(trainer: BilevelTrainer, train_batch: Batch, outer_batch: Batch) -> dict[str, float]:
    """Run one real training step with an outer step, as training would (it updates W and phi), and return
    seconds per phase. Communication is also counted inside the phase it happens in; ``mixed_term`` includes the
    solver's vector arithmetic (small beside the products)."""
    timer = PhaseTimer(trainer.device)
    with timer("total"):
        trainer.train_step(train_batch, outer_batch, timer)
    sec = timer.seconds
    return {
        "inner_forward_backward": sec["inner_forward_backward"],
        "outer_gradient": sec["outer_gradient"],
        "graph_build": sec["graph_build"],
        "hvp": sec["hvp"],
        "hvp_count": float(timer.counts["hvp"]),
        "mixed_term": max(0.0, sec["solve_and_mixed_term"] - sec["hvp"]),
        "direct_term": sec["direct_term"],
        "optimizer": sec["optimizer"],
        "communication": sec["communication"],
        "total": sec["total"],
    }
