"""A command's result as JSON: one line on stdout, and optionally the indented JSON in a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _default(value: Any) -> Any:
    """Numbers the json module does not know (numpy, torch scalars) as floats, anything else as its str."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def write_json(result: Any, out: str | Path) -> None:
    """Write `result` indented to the file `out` (its folder created)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2, default=_default) + "\n")


def print_json(result: Any, out: str | Path | None = None) -> None:
    """Print `result` as one JSON line (flushed); with `out`, also write it indented to that file."""
    if out:
        write_json(result, out)
    print(json.dumps(result, default=_default), flush=True)
