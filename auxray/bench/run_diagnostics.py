"""What a finished reproduction run can show about a learned method doing nothing: hypergradient norms, learned
task weights, gradient cosines, and for label generators how spread the generated labels are. A session sink that
reads the run's view after the last epoch."""

from __future__ import annotations

from typing import Any

from auxray.train.session import RunView, Summary


class Diagnostics:
    """Session sink that, after the last epoch, records what can show a learned method doing nothing:
    hypergradient norms, learned task weights, and for label generators how spread the generated labels are."""

    def __init__(self) -> None:
        self.out: dict[str, Any] = {}

    def epoch(self, view: RunView, metrics: dict[str, Any], summary: Summary | None) -> None:
        if not view.done:
            return
        try:
            self.out = collect(view, metrics)
        except Exception as exc:  # a diagnostic must never fail a finished run
            self.out = {"error": f"{type(exc).__name__}: {exc}"}


def collect(view: RunView, metrics: dict[str, Any]) -> dict[str, Any]:
    """The diagnostics of a run's view at its last epoch (``metrics``: that epoch's)."""
    out: dict[str, Any] = {
        "sizes": dict(view.sizes),
        "device": view.device,
        "train_seconds": sum(h.get("epoch_seconds", 0.0) for h in view.history),
        "inner_steps": view.step,
        "outer_steps": len(view.hypergrad_norms),
    }
    norms = [n for _, n in view.hypergrad_norms]
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
    weights = sorted({k for h in view.history for k in h if k.startswith("task_weight/")})
    if weights:  # every epoch's learned weight of each task, for the weights-over-training plot
        out["task_weight_history"] = {k.split("/", 1)[1]: [h.get(k) for h in view.history] for k in weights}
    labels = view.labels()
    if labels is not None:
        out["labels"] = labels.stats()
    return out
