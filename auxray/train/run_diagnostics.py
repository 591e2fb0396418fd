"""What a finished run can show about a learned method doing nothing: hypergradient norms, learned task weights,
gradient cosines, and for label generators how spread the generated labels are. Read from the run's view after the
last epoch (a benchmark table's trials record it beside their result)."""

from __future__ import annotations

from typing import Any

from auxray.train.session import RunView


def run_diagnostics(view: RunView, metrics: dict[str, Any]) -> dict[str, Any]:
    """The diagnostics of a run's view after its last epoch (`metrics`: that epoch's); a failure is recorded as
    an `error` entry, never raised: a diagnostic must not fail a finished run."""
    try:
        return collect(view, metrics)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


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
