"""Markdown tables for the rendered benchmark sections: one cell format, one table layout, shared by every page."""

from __future__ import annotations

from typing import Any


def fmt(x: Any, digits: int = 3) -> str:
    """A cell: floats to DIGITS significant figures, None as a dash."""
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table with HEADER and ROWS, each cell through `fmt`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
