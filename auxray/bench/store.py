"""The reproduction's progress file: one JSON line per finished run, appended (and synced) as each run ends, so
an interrupted job keeps what it finished and a re-run reuses it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def read_runs(path: Path) -> list[dict[str, Any]]:
    """Finished runs from the JSON-lines progress file (a torn last line from a killed job is ignored)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_run(path: Path, row: dict[str, Any]) -> None:
    """Append one finished run and sync it to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def by_fingerprint(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, int, str | None], dict[str, Any]]:
    """Rows by (method, seed, fingerprint): a run is reused only under the same resolved config (the last row
    of a key wins)."""
    return {(r["method"], r["seed"], r.get("fingerprint")): r for r in rows}
