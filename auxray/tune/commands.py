"""Bodies of `auxray sweep`, `auxray ui`, `auxray tracking replay` and `auxray bench sweep` (the parsers live
in auxray.cli). Each returns the process exit code; UserError propagates to the CLI's one-line handler."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _print_json(result: dict[str, Any], out: str | None = None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, default=str), flush=True)


def format_summary(result: dict[str, Any]) -> str:
    """The sweep's outcome in a few lines."""
    best = result.get("best") or {}
    test = best.get("test_accuracy")
    params = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in sorted((best.get("params") or {}).items()))
    return "\n".join([
        f"sweep {result['sweep']}: {result['trials']} trials ({result['completed']} completed, "
        f"{result['stopped_early']} stopped early, {result['errored']} failed), "
        f"{result['trial_epochs']}/{result['budget_epochs']} trial-epochs, {result['seconds']:.0f}s",
        f"best trial {best.get('trial_id')}: val accuracy {best.get('val_accuracy', float('nan')):.4f}, "
        f"test accuracy {'n/a' if test is None else f'{test:.4f}'}",
        f"  {params}",
        f"MLflow: {result['tracking_uri']} experiment {result['experiment']!r}, parent run {result['parent_run_id']}",
    ])


def sweep_command(config: str, *, resume: bool, tracking_uri: str | None, as_json: bool, progress: bool) -> int:
    """`auxray sweep CONFIG`: validate, check the tracking store, run or resume the sweep, print the result."""
    from auxray.tune.config import load_sweep
    from auxray.tune.sweep import run_sweep

    sweep = load_sweep(config)
    result = run_sweep(sweep, resume=resume, tracking_uri=tracking_uri, progress=progress)
    if as_json:
        _print_json(result)
    else:
        print(format_summary(result), flush=True)
    return 0


def ui_command(port: int, tracking_uri: str | None) -> int:
    """`auxray ui`: the MLflow UI on 127.0.0.1 over the tracking store."""
    from auxray.tracking import serve_ui

    return serve_ui(tracking_uri, host="127.0.0.1", port=port)


def replay_command(spool: str, tracking_uri: str | None, as_json: bool) -> int:
    """`auxray tracking replay SPOOL`: resend what a run buffered while the store was away."""
    from auxray.tracking import replay_spool

    result = replay_spool(spool, tracking_uri)
    if as_json:
        _print_json(result)
    else:
        print(f"replayed {spool}: {result['sent']} records sent to run {result['run_id']} "
              f"({result['skipped']} skipped, {result['already_sent']} sent before)", flush=True)
    return 0


def bench_sweep_command(base: str, *, trials: int, concurrency: int, storage: str, tracking_uri: str | None,
                        seed: int, out: str | None) -> int:
    """`auxray bench sweep`: TPE+ASHA against random search without early stopping, as JSON."""
    from auxray.bench.sweep import run_sweep_bench

    result = run_sweep_bench(base, trials=trials, concurrency=concurrency, storage=storage,
                             tracking_uri=tracking_uri, seed=seed)
    print(f"bench sweep: {json.dumps(result['comparison'])}", file=sys.stderr, flush=True)
    _print_json(result, out)
    return 0
