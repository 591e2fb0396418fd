"""MLflow tracking of runs and sweeps: URI resolution, run tracker with an offline spool, plots, UI.

Every name is loaded on first use (PEP 562): MLflow takes seconds to import, matplotlib and torch more, so a run
with tracking off, or an `auxray tracking ...` command, loads only what it touches."""

from importlib import import_module
from typing import Any

_HOMES = {
    "replay_spool": "spool",
    "RunTracker": "tracker",
    "end_parent": "parents",
    "find_parent": "parents",
    "sanitize_key": "tracker",
    "start_parent": "parents",
    "tracked_run": "tracker",
    "serve_ui": "ui",
    "artifact_location": "uri",
    "check_reachable": "uri",
    "resolve_uri": "uri",
    "plot_hypergrad_norms": "plots",
    "plot_label_assignment": "plots",
    "plot_task_weights": "plots",
    "write_plots": "plots",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"auxray.tracking.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'auxray.tracking' has no attribute {name!r}")
