"""No module under auxray/ imports from a layer above its own (every import counts: module level, inside a
function, under TYPE_CHECKING).

The layers, lowest first; a module may import its own package, any lower layer and the base:

    base      auxray, auxray.config, auxray.config_yaml, auxray.errors, auxray.importpath, auxray.jsonout,
              auxray.method_settings, auxray.method_specs, auxray.paths (usable by all; they import only each other)
    1         auxray.hypergrad
    2         auxray.models, auxray.auxnets (not each other)
    3         auxray.data
    4         auxray.methods
    5         auxray.train
    6         auxray.tune, auxray.tracking, auxray.bench: one level, not each other, except that tune may import
              tracking (sweeps are tracked) and bench may import tracking and tune (bench sweep compares Tune
              sweeps); so tracking imports neither, tune not bench
    7         auxray.cli, auxray.api (may import all; nothing imports them)

jobs/ and tests/ sit above the package and may import any of it. A new top-level module or package fails this
test until it is given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "auxray"
BASE = {
    "auxray",
    "auxray.config",
    "auxray.config_yaml",
    "auxray.errors",
    "auxray.importpath",
    "auxray.jsonout",
    "auxray.method_settings",
    "auxray.method_specs",
    "auxray.paths",
}
LEVEL = {
    "hypergrad": 1,
    "models": 2,
    "auxnets": 2,
    "data": 3,
    "methods": 4,
    "train": 5,
    "tune": 6,
    "tracking": 6,
    "bench": 6,
    "cli": 7,
    "api": 7,
}
SAME_LEVEL_ALLOWED = {("tune", "tracking"), ("bench", "tracking"), ("bench", "tune")}
# (importing module, imported module) pairs that break the order today and are to be removed.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every `import auxray...` / `from auxray... import` in the file, relative ones resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return [(line, m) for line, m in found if m == "auxray" or m.startswith("auxray.")]


def group(module: str) -> str:
    """'base' for the base layer, else the top-level subpackage or module under auxray ('train', 'cli')."""
    if module in BASE:
        return "base"
    return module.split(".")[1]


def violation(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None when it may."""
    mine, theirs = group(importer), group(imported)
    for g, m in ((mine, importer), (theirs, imported)):
        if g != "base" and g not in LEVEL:
            return f"{m} belongs to no layer: give auxray.{g} one in tests/test_layers.py"
    if theirs == "base" or mine == theirs:
        return None
    if mine == "base":
        return f"the base layer imports {theirs}"
    if LEVEL[theirs] < LEVEL[mine] or (mine, theirs) in SAME_LEVEL_ALLOWED:
        return None
    where = "above" if LEVEL[theirs] > LEVEL[mine] else "beside"
    return f"{mine} (layer {LEVEL[mine]}) imports {theirs} (layer {LEVEL[theirs]}), {where} it"


def test_layer_rule_itself() -> None:
    assert violation("auxray.train.loop", "auxray.methods.base") is None
    assert violation("auxray.bench.sweep", "auxray.tune.config") is None
    assert violation("auxray.tune.sweep", "auxray.tracking") is None
    assert violation("auxray.cli", "auxray.bench.reproduce") is None
    assert violation("auxray.paths", "auxray.config") is None
    assert "above" in violation("auxray.methods.base", "auxray.train.loop")
    assert "beside" in violation("auxray.tune.commands", "auxray.bench.sweep")
    assert "beside" in violation("auxray.tracking.tracker", "auxray.tune.runs")
    assert "beside" in violation("auxray.models", "auxray.auxnets")
    assert "above" in violation("auxray.bench.reproduce", "auxray.cli")
    assert "base layer" in violation("auxray.config", "auxray.models")
    assert "no layer" in violation("auxray.train.loop", "auxray.newthing")


def test_no_module_imports_from_a_layer_above() -> None:
    problems, used_exceptions = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for line, imported in imported_modules(path):
            why = violation(importer, imported)
            if why is None:
                continue
            if (importer, imported) in KNOWN_EXCEPTIONS:
                used_exceptions.add((importer, imported))
                continue
            problems.append(f"{path.relative_to(REPO)}:{line}: import of {imported}: {why}")
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)
    stale = KNOWN_EXCEPTIONS - used_exceptions
    assert not stale, f"known exceptions no longer needed, remove them from KNOWN_EXCEPTIONS: {sorted(stale)}"
