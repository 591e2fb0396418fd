"""Bodies of `auxray ui` and `auxray tracking replay` (the parsers live in auxray.cli). Each returns the
process exit code; UserError propagates to the CLI's one-line handler."""

from __future__ import annotations

from auxray.jsonout import print_json
from auxray.tracking.spool import replay_spool
from auxray.tracking.ui import serve_ui


def ui_command(port: int, tracking_uri: str | None) -> int:
    """`auxray ui`: the MLflow UI on 127.0.0.1 over the tracking store."""
    return serve_ui(tracking_uri, host="127.0.0.1", port=port)


def replay_command(spool: str, tracking_uri: str | None, as_json: bool) -> int:
    """`auxray tracking replay SPOOL`: resend what a run buffered while the store was away."""
    result = replay_spool(spool, tracking_uri)
    if as_json:
        print_json(result)
    else:
        print(
            f"replayed {spool}: {result['sent']} records sent to run {result['run_id']} "
            f"({result['skipped']} skipped, {result['already_sent']} sent before)",
            flush=True,
        )
    return 0
