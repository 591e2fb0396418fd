"""Body of `auxray sweep` (the parser lives in auxray.cli). It returns the process exit code; UserError
propagates to the CLI's one-line handler."""

from __future__ import annotations

from typing import Any

from auxray.jsonout import print_json
from auxray.tune.config import load_sweep


def format_summary(result: dict[str, Any]) -> str:
    """The sweep's outcome in a few lines."""
    best = result.get("best") or {}
    test = best.get("test_accuracy")
    params = "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted((best.get("params") or {}).items())
    )
    return "\n".join(
        [
            f"sweep {result['sweep']}: {result['trials']} trials ({result['completed']} completed, "
            f"{result['stopped_early']} stopped early, {result['errored']} failed), "
            f"{result['trial_epochs']}/{result['budget_epochs']} trial-epochs, {result['seconds']:.0f}s",
            f"best trial {best.get('trial_id')}: val accuracy {best.get('val_accuracy', float('nan')):.4f}, "
            f"test accuracy {'n/a' if test is None else f'{test:.4f}'}",
            f"  {params}",
            f"MLflow: {result['tracking_uri']} experiment {result['experiment']!r}, "
            f"parent run {result['parent_run_id']}",
        ]
    )


def sweep_command(config: str, *, resume: bool, tracking_uri: str | None, as_json: bool, progress: bool) -> int:
    """`auxray sweep CONFIG`: validate, check the tracking store, run or resume the sweep, print the result."""
    sweep = load_sweep(config)
    from auxray.tune.sweep import run_sweep  # Ray and torch: after the config checked out (a typo fails fast)

    result = run_sweep(sweep, resume=resume, tracking_uri=tracking_uri, progress=progress)
    if as_json:
        print_json(result)
    else:
        print(format_summary(result), flush=True)
    return 0
