"""MLflow tracking of runs and sweeps: URI resolution, run tracker with an offline spool, plots, UI.
The plot functions load matplotlib and torch on first use, so `auxray tracking …` commands start fast."""

from typing import Any

from auxray.tracking.spool import replay_spool
from auxray.tracking.tracker import (
    RunTracker,
    end_parent,
    find_parent,
    sanitize_key,
    start_parent,
    tracked_run,
)
from auxray.tracking.ui import serve_ui
from auxray.tracking.uri import artifact_location, check_reachable, resolve_uri

__all__ = [
    "RunTracker",
    "artifact_location",
    "check_reachable",
    "end_parent",
    "find_parent",
    "plot_hypergrad_norms",
    "plot_label_assignment",
    "plot_task_weights",
    "replay_spool",
    "resolve_uri",
    "sanitize_key",
    "serve_ui",
    "start_parent",
    "tracked_run",
    "write_plots",
]

_PLOTS = ("plot_hypergrad_norms", "plot_label_assignment", "plot_task_weights", "write_plots")


def __getattr__(name: str) -> Any:
    if name in _PLOTS:
        from auxray.tracking import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'auxray.tracking' has no attribute {name!r}")
