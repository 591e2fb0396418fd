"""What a run reports about itself beyond its losses, kept out of the per-step hot path: learned task weights
that cost extra work to read and gradient cosines (once an epoch), the cheap hypergradient's cosine to the full
one, and the label generator's assignment of sub-classes (for the plot and the run's diagnostics)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from auxray.data import BatchIterator, TensorData
from auxray.hypergrad import batch_stats_only
from auxray.methods import Batch, InnerResult
from auxray.methods.gradient_rules import cosine
from auxray.train.hypergradient import build_hypergradient
from auxray.train.hyperstep import compute_hypergrad

if TYPE_CHECKING:  # the trainer imports this module; the type is only for annotations
    from auxray.train.loop import BilevelTrainer


def epoch_diagnostics(trainer: BilevelTrainer) -> dict[str, float]:
    """On one training batch: the objective's learned task weights that are not a by-product of the inner loss and
    each one's distance from its initial value (task_weight_change/), and for each auxiliary loss the cosine and norm
    ratio of its gradient to the main loss's on the shared trunk (grad_cosine/, grad_norm_ratio/)."""
    objective, model = trainer.objective, trainer.model
    if not objective.heads.keys() - {"main"}:
        return {}
    res = _inner_on_one_batch(trainer)
    current = objective.task_weights(trainer.auxnet, res)
    weights = {f"task_weight/{k}": float(v) for k, v in current.items()}
    if current and trainer.initial_auxnet is not None:
        initial = objective.task_weights(trainer.initial_auxnet, res)
        weights.update({f"task_weight_change/{k}": abs(float(v) - float(initial[k])) for k, v in current.items()})
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
        out[f"grad_norm_ratio/{name}"] = float(_norm(g_aux) / _norm(g_main).clamp(min=1e-30))
    model.zero_grad(set_to_none=True)
    return out


def task_weights_now(trainer: BilevelTrainer) -> dict[str, float]:
    """Every task weight the objective has at the current state on one training batch, learned or a by-product of
    the inner loss (JTDS's mean per-sample weights), without training: e.g. a run's initial weights."""
    res = _inner_on_one_batch(trainer)
    both = {**res.task_weights, **trainer.objective.task_weights(trainer.auxnet, res)}
    return {k: float(v) for k, v in both.items()}


def _inner_on_one_batch(trainer: BilevelTrainer) -> InnerResult:
    """The objective's inner result on the epoch's first training batch, batch statistics left unchanged."""
    trainer.train_iter.set_epoch(trainer.epoch)
    x, y = next(iter(trainer.train_iter))
    batch = trainer.prepare(x, y, torch.Generator().manual_seed(trainer.epoch))
    trainer.model.train()
    with batch_stats_only(trainer.model):
        return trainer.objective.inner(trainer.model, trainer.auxnet, batch)


def _norm(grads: tuple[Tensor, ...]) -> Tensor:
    """The L2 norm of a gradient given as a tensor tuple."""
    return torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()


def hypergrad_cosine(trainer: BilevelTrainer, train_batch: Batch, outer_batch: Batch) -> float:
    """Cosine between the configured (possibly cheapened) hypergradient and the full-cost one (every primary
    parameter, whole batches) at the current W; changes nothing."""
    lr = trainer.opt_w.param_groups[0]["lr"]
    full = build_hypergradient(trainer.cfg.hypergrad.model_copy(update={"params": "all", "batch_size": None}))
    auxnet, _ = trainer.phi_parts()
    args = (trainer.objective, trainer.model, auxnet, train_batch, outer_batch)
    cheap = compute_hypergrad(*args, trainer.hypergradient, inner_lr=lr, reduce=trainer.reduce_hook())
    return float(cosine(cheap, compute_hypergrad(*args, full, inner_lr=lr, reduce=trainer.reduce_hook())))


@dataclass(frozen=True)
class LabelAssignment:
    """The label generator's output on a sample of images, computed once: each image's class ``y`` and its
    probabilities over the ``sum(psi)`` sub-classes (class c owns a block of ``psi[c]``); what the label-assignment
    plot and the run's label diagnostics both read."""

    probs: Tensor  # [n, sum(psi)], float64 on the CPU
    y: Tensor  # [n]
    psi: list[int]

    def counts(self) -> Tensor:
        """``[num_classes, sum(psi)]`` counts of each image's most likely sub-class, by class."""
        k = sum(self.psi)
        flat = self.y.long() * k + self.probs.argmax(dim=1)
        return torch.bincount(flat, minlength=len(self.psi) * k).view(len(self.psi), k)

    def stats(self) -> dict[str, float]:
        """How spread the generated labels are:
        sample_entropy  mean per-image entropy / log(psi[y]): 0 = one-hot labels, 1 = uniform over the block;
        usage_entropy   per class, entropy of the class's mean label / log(psi[y]), averaged over classes:
                        0 = every image of a class gets the same sub-class (collapse), 1 = all used equally;
        subclasses_used fraction of the sum(psi) sub-classes that are some image's argmax."""
        p, y, psi = self.probs, self.y, self.psi
        logpsi = torch.tensor([math.log(psi[int(c)]) if psi[int(c)] > 1 else 1.0 for c in y], dtype=torch.float64)
        ent = -(p * p.clamp_min(1e-12).log()).sum(1) / logpsi
        usage = []
        for c in y.unique():
            if psi[int(c)] < 2:
                continue
            pbar = p[y == c].mean(0)
            usage.append(float(-(pbar * pbar.clamp_min(1e-12).log()).sum() / math.log(psi[int(c)])))
        return {
            "sample_entropy": float(ent.mean()),
            "usage_entropy": sum(usage) / max(len(usage), 1),
            "subclasses_used": p.argmax(1).unique().numel() / sum(psi),
            "images": len(y),
        }


@torch.no_grad()
def label_assignment(trainer: BilevelTrainer, data: TensorData, max_images: int = 2000) -> LabelAssignment:
    """The label generator's probabilities over up to `max_images` images of `data`, spread evenly over the split,
    without augmentation."""
    psi = trainer.objective.label_classes
    if psi is None or trainer.auxnet is None:
        raise ValueError(f"{trainer.cfg.method.name} learns no auxiliary labels")
    n = len(data)
    if n > max_images:
        data = data.subset(torch.linspace(0, n - 1, max_images).round().long())
    net = trainer.auxnet
    was_training = net.training
    net.eval()
    probs, ys = [], []
    try:
        for x, y in BatchIterator(
            data, 500, shuffle=False, seed=0, drop_last=False, augment=False, device=trainer.device
        ):
            probs.append(net(x.to(trainer.device, trainer.dtype), y.to(trainer.device)).double().cpu())
            ys.append(y.long().cpu())
    finally:
        net.train(was_training)
    return LabelAssignment(torch.cat(probs), torch.cat(ys), list(psi))
