"""Hyperparameter sweeps over what hypergradients cannot tune: Ray Tune (Optuna TPE + ASHA) with one MLflow
parent run per sweep and one child run per trial. Ray is imported only when a sweep runs."""

from auxray.tune.config import ParamSpace, SweepConfig, load_sweep

__all__ = ["ParamSpace", "SweepConfig", "load_sweep", "run_sweep"]


def run_sweep(*args, **kwargs):
    """See auxray.tune.sweep.run_sweep (imported on first use, with Ray)."""
    from auxray.tune.sweep import run_sweep as _run_sweep

    return _run_sweep(*args, **kwargs)
