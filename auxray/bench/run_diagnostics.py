"""What a finished reproduction run can show about a learned method doing nothing: hypergradient norms, learned
task weights, gradient cosines, and for label generators how spread the generated labels are. An epoch
callback, run in the training process after the last epoch."""

from __future__ import annotations

import math
from typing import Any

import torch

from auxray.data import BatchIterator
from auxray.method_specs import spec


class Diagnostics:
    """Epoch callback that, after the last epoch, records what can show a learned method doing nothing:
    hypergradient norms, learned task weights, and for label generators how spread the generated labels are."""

    def __init__(self, max_images: int = 1000) -> None:
        self.max_images = max_images
        self.out: dict[str, Any] = {}

    def __call__(self, trainer: Any, metrics: dict[str, Any]) -> None:
        if trainer.epoch != trainer.cfg.trainer.epochs:
            return
        try:
            self.out = self.collect(trainer, metrics)
        except Exception as exc:  # a diagnostic must never fail a finished run
            self.out = {"error": f"{type(exc).__name__}: {exc}"}

    def collect(self, trainer: Any, metrics: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sizes": {s: len(getattr(trainer.data, s)) for s in ("train", "aux", "val", "test")},
            "device": str(trainer.device),
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
            out["labels"] = self.label_stats(trainer)
        return out

    def label_stats(self, trainer: Any) -> dict[str, float]:
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
                if seen >= self.max_images:
                    break
        gen.train(was_training)
        p = torch.cat(probs)[: self.max_images]
        y = torch.cat(ys)[: self.max_images]
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
