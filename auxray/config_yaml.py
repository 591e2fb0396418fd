"""Raw config mappings: a YAML file read into one, and dotted ``section.key=value`` overrides set in it, before
pydantic validates it (`auxray.config`); light enough for code that only edits configs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from auxray.errors import UserError


def parse_value(text: str) -> Any:
    """Parse one ``--set`` value as YAML, so ``3``, ``0.1``, ``true``, ``[2,3]`` and ``null`` get their types."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_dotted(raw: dict[str, Any], key: str, value: Any, source: str = "--set") -> None:
    """Set ``section.key`` in a raw config mapping, creating sections as needed."""
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UserError(f"{source} has an empty key {key!r}")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"{source} {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``section.key=value`` items as dotted keys and typed values (a later item for a key wins); an item without
    '=' is a UserError."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a raw config mapping."""
    for key, value in parse_overrides(overrides).items():
        set_dotted(raw, key, value)
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning a missing or malformed file into a UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = exc.problem_mark if isinstance(exc, yaml.MarkedYAMLError) else None
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"config {p} is not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config {p} must be a mapping of sections")
    return raw
