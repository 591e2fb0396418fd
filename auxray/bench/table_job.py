"""The entry of a table's job script (`jobs/reproduce.py`, `jobs/weighting.py`): its options, bad input as one
line and exit 2, an interrupt that says how to resume, and the table's JSON on stdout."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from auxray.errors import UserError


def table_job(
    name: str,
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run_from_args: Callable[[argparse.Namespace], Any],
    argv: list[str] | None = None,
) -> int:
    """Parse `argv` as `jobs/<name>.py` (described by the first paragraph of `doc`), build the table and print it;
    the exit status."""
    parser = argparse.ArgumentParser(prog=f"jobs/{name}.py", description=doc.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        table = run_from_args(args)
    except UserError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; finished trials are kept (run the same command again to resume)", file=sys.stderr)
        return 130
    print(json.dumps(table, default=float), flush=True)
    return 0
