"""What a finished run can show about a learned method doing nothing: hypergradient norms, learned task weights,
gradient cosines, and for label generators how spread the generated labels are. Computed in the training
process after the last epoch (a benchmark table's trials record it beside their result)."""

from __future__ import annotations

import math
from typing import Any

import torch

from auxray.data import BatchIterator
from auxray.method_specs import spec
from auxray.train.loop import BilevelTrainer

MAX_IMAGES = 1000  # training images the label statistics look at


def run_diagnostics(trainer: BilevelTrainer, metrics: dict[str, Any]) -> dict[str, Any]:
    """The diagnostics of a run after its last epoch (`metrics`: that epoch's); a failure is recorded as an
    `error` entry, never raised: a diagnostic must not fail a finished run."""
    try:
        return _collect(trainer, metrics)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _collect(trainer: BilevelTrainer, metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sizes": {s: len(getattr(trainer.data, s)) for s in ("train", "aux", "val", "test")},
        "device": str(trainer.device),
        "steps": trainer.step,
        "train_seconds": sum(h.get("epoch_seconds", 0.0) for h in trainer.history),
        "inner_steps": trainer.step,
        "outer_steps": len(trainer.hypergrad_norms),
    }
    norms = [n for _, n in trainer.hypergrad_norms]
    if norms:
        out["hypergrad_norm"] = {
            "count": len(norms),
            "first": norms[0],
            "last": norms[-1],
            "mean": sum(norms) / len(norms),
            "min": min(norms),
            "max": max(norms),
        }
    for k, v in metrics.items():
        if k.startswith(("task_weight/", "grad_cosine/")):
            out[k] = v
    weights = sorted({k for h in trainer.history for k in h if k.startswith("task_weight/")})
    if weights:  # every epoch's learned weight of each task, for the weights-over-training plot
        out["task_weight_history"] = {k.split("/", 1)[1]: [h.get(k) for h in trainer.history] for k in weights}
    if spec(trainer.cfg.method.name).learns_labels and trainer.auxnet is not None:
        out["labels"] = label_stats(trainer)
    return out


def label_stats(trainer: BilevelTrainer, max_images: int = MAX_IMAGES) -> dict[str, float]:
    """Generated labels on (up to max_images) training images, without augmentation:
    sample_entropy  mean per-image entropy / log(psi[y]): 0 = one-hot labels, 1 = uniform over the block;
    usage_entropy   per class, entropy of the class's mean label / log(psi[y]), averaged over classes:
                    0 = every image of a class gets the same sub-class (collapse), 1 = all used equally;
    subclasses_used fraction of the sum(psi) sub-classes that are some image's argmax."""
    gen = trainer.auxnet
    psi = list(gen.psi)
    was_training = gen.training
    gen.eval()
    it = BatchIterator(
        trainer.data.train,
        trainer.cfg.trainer.eval_batch_size,
        shuffle=False,
        seed=0,
        drop_last=False,
        augment=False,
        device=trainer.device,
    )
    probs, ys, seen = [], [], 0
    with torch.no_grad():
        for x, y in it:
            p = gen(x.to(trainer.device, trainer.dtype), y.to(trainer.device))
            probs.append(p.double().cpu())
            ys.append(y.cpu())
            seen += len(y)
            if seen >= max_images:
                break
    gen.train(was_training)
    p = torch.cat(probs)[:max_images]
    y = torch.cat(ys)[:max_images]
    logpsi = torch.tensor([math.log(psi[int(c)]) if psi[int(c)] > 1 else 1.0 for c in y], dtype=torch.float64)
    ent = -(p * p.clamp_min(1e-12).log()).sum(1) / logpsi
    usage = []
    for c in y.unique():
        mask = y == c
        if psi[int(c)] < 2:
            continue
        pbar = p[mask].mean(0)
        usage.append(float(-(pbar * pbar.clamp_min(1e-12).log()).sum() / math.log(psi[int(c)])))
    used = p.argmax(1).unique().numel() / sum(psi)
    return {
        "sample_entropy": float(ent.mean()),
        "usage_entropy": sum(usage) / max(len(usage), 1),
        "subclasses_used": used,
        "images": len(y),
    }
