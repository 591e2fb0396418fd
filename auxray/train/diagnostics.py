"""What a run reports about itself beyond its losses, kept out of the per-step hot path: learned task weights
that cost extra work to read and gradient cosines (once an epoch), the cheap hypergradient's cosine to the full
one, and a phase-by-phase timing of one outer step (for `auxray bench overhead`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from auxray.data import BatchIterator, TensorData
from auxray.hypergrad import batch_stats_only
from auxray.methods import Batch
from auxray.methods.gradient_rules import cosine
from auxray.train.hypergradient import build_hypergradient
from auxray.train.hyperstep import PhaseTimer, compute_hypergrad

if TYPE_CHECKING:  # the trainer imports this module; the type is only for annotations
    from auxray.train.loop import BilevelTrainer


def example_batches(trainer: BilevelTrainer, seed: int) -> tuple[Batch, Batch]:
    """A prepared (training batch, aux batch) pair chosen by ``seed``, for benchmarks and diagnostics."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    trainer.train_iter.set_epoch(seed)
    x, y = next(iter(trainer.train_iter))
    aux_iter = BatchIterator(
        trainer.data.aux,
        trainer.cfg.trainer.batch_size,
        shuffle=True,
        seed=seed,
        drop_last=False,
        augment=False,
        device=trainer.device,
    )
    ax, ay = next(iter(aux_iter))
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
    return trainer.prepare(x, y, gen), trainer.prepare(ax, ay, gen)


def epoch_diagnostics(trainer: BilevelTrainer) -> dict[str, float]:
    """On one training batch: the objective's learned task weights that are not a by-product of the inner loss,
    and the cosine between the main and each auxiliary loss's gradient on the shared trunk."""
    objective, model = trainer.objective, trainer.model
    if not objective.heads.keys() - {"main"}:
        return {}
    trainer.train_iter.set_epoch(trainer.epoch)
    x, y = next(iter(trainer.train_iter))
    batch = trainer.prepare(x, y, torch.Generator().manual_seed(trainer.epoch))
    model.train()
    with batch_stats_only(model):
        res = objective.inner(model, trainer.auxnet, batch)
    weights = {f"task_weight/{k}": float(v) for k, v in objective.task_weights(trainer.auxnet, res).items()}
    if res.aux_per_sample is None or res.main_per_sample is None or res.aux_per_sample.shape[1] == 0:
        return weights
    collective = trainer.collective
    shared = [p for p in model.trunk.parameters() if p.requires_grad]
    g_main = collective.all_reduce_mean(torch.autograd.grad(res.main_per_sample.mean(), shared, retain_graph=True))
    out = dict(weights)
    for j, name in enumerate(objective.aux_names):
        g_aux = torch.autograd.grad(res.aux_per_sample[:, j].mean(), shared, retain_graph=True, allow_unused=True)
        g_aux = collective.all_reduce_mean(
            tuple(torch.zeros_like(p) if g is None else g for p, g in zip(shared, g_aux))
        )
        out[f"grad_cosine/{name}"] = float(cosine(g_main, g_aux))
    model.zero_grad(set_to_none=True)
    return out


def hypergrad_cosine(trainer: BilevelTrainer, train_batch: Batch, aux_batch: Batch) -> float:
    """Cosine between the configured (possibly cheapened) hypergradient and the full-cost one (every primary
    parameter, whole batches) at the current W; changes nothing."""
    lr = trainer.opt_w.param_groups[0]["lr"]
    full = build_hypergradient(trainer.cfg.hypergrad.model_copy(update={"params": "all", "batch_size": None}))
    auxnet, _ = trainer.phi_parts()
    args = (trainer.objective, trainer.model, auxnet, train_batch, aux_batch)
    cheap = compute_hypergrad(*args, trainer.hypergradient, inner_lr=lr, reduce=trainer.reduce_hook())
    return float(cosine(cheap, compute_hypergrad(*args, full, inner_lr=lr, reduce=trainer.reduce_hook())))


def outer_step_breakdown(trainer: BilevelTrainer, train_batch: Batch, aux_batch: Batch) -> dict[str, float]:
    """Run one real outer step as training would (it updates W and phi) and return seconds per phase.
    Communication is also counted inside the phase it happens in; ``mixed_term`` includes the solver's
    vector arithmetic (small beside the products)."""
    timer = PhaseTimer(trainer.device)
    trainer.step += 1
    with timer("total"):
        if trainer.hypergradient.fused:
            trainer.fused_step(train_batch, aux_batch, timer)
        else:
            with timer("inner_forward_backward"):
                trainer.inner_step(train_batch)
            trainer.outer_step(train_batch, aux_batch, timer)
    sec = timer.seconds
    return {
        "inner_forward_backward": sec["inner_forward_backward"],
        "aux_gradient": sec["aux_gradient"],
        "graph_build": sec["graph_build"],
        "hvp": sec["hvp"],
        "hvp_count": float(timer.counts["hvp"]),
        "mixed_term": max(0.0, sec["solve_and_mixed_term"] - sec["hvp"]),
        "direct_term": sec["direct_term"],
        "optimizer": sec["optimizer"],
        "communication": sec["communication"],
        "total": sec["total"],
    }


@torch.no_grad()
def label_counts(trainer: BilevelTrainer, data: TensorData, max_images: int = 2000) -> Tensor:
    """Counts ``[num_classes, sum(psi)]`` of the label generator's most likely sub-class over up to `max_images`
    images of `data`, spread evenly over the split (what the label-assignment plot shows)."""
    psi = trainer.objective.label_classes
    if psi is None or trainer.auxnet is None:
        raise ValueError(f"{trainer.cfg.method.name} learns no auxiliary labels")
    n = len(data)
    if n > max_images:
        data = data.subset(torch.linspace(0, n - 1, max_images).round().long())
    counts = torch.zeros(len(psi), sum(psi), dtype=torch.long)
    net = trainer.auxnet
    was_training = net.training
    net.eval()
    try:
        for x, y in BatchIterator(
            data, 500, shuffle=False, seed=0, drop_last=False, augment=False, device=trainer.device
        ):
            probs = net(x.to(trainer.device, trainer.dtype), y.to(trainer.device))
            flat = y.long().cpu() * sum(psi) + probs.argmax(dim=1).cpu()
            counts += torch.bincount(flat, minlength=counts.numel()).view_as(counts)
    finally:
        net.train(was_training)
    return counts
