"""Objects named by import path, ``"package.module:attribute"``: how a config names a user's own backbone or
auxiliary task. Resolved when the config is validated, so a wrong name is one line before any training."""

from __future__ import annotations

import importlib
import operator
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any


def is_import_path(text: str) -> bool:
    """Whether `text` has the form ``module:attribute`` (a colon with a name on either side)."""
    module, sep, attr = text.partition(":")
    return bool(sep and module.strip() and attr.strip())


def _import_module(name: str) -> ModuleType:
    """Import a module from sys.path or, failing that, from the working directory (where a user's own module
    usually sits; the ``auxray`` console script does not put it on sys.path)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != name.split(".")[0] or cwd in sys.path:
            raise
        sys.path.append(cwd)
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            sys.path.remove(cwd)
            raise exc from None


def resolve_callable(path: str) -> Callable[..., Any]:
    """The callable that ``"package.module:attribute"`` names (the attribute may be dotted, ``module:Class.make``).

    Raises ValueError with a one-line reason (``cannot import 'foo.bar:baz': No module named 'foo'``) when the
    module or attribute is missing, importing the module fails, or the object is not callable.
    """
    if not is_import_path(path):
        raise ValueError(f"{path!r} is not an import path of the form 'package.module:attribute'")
    module_name, _, attr = path.partition(":")
    try:
        obj = operator.attrgetter(attr.strip())(_import_module(module_name.strip()))
    except Exception as exc:  # any failure while importing user code is reported, not raised through
        reason = str(exc) if isinstance(exc, (ImportError, AttributeError)) else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"cannot import {path!r}: {' '.join(reason.split())}") from None
    if not callable(obj):
        raise ValueError(f"{path!r} is a {type(obj).__name__}, not a callable")
    return obj


def check_import_path(value: str, builtins: tuple[str, ...], what: str) -> str:
    """A built-in name, or an import path that resolves to a callable now (ValueError in one line otherwise)."""
    if value in builtins:
        return value
    if not is_import_path(value):
        raise ValueError(
            f"unknown {what} {value!r}; choose {', '.join(builtins)}, or name your own as 'package.module:function'"
        )
    resolve_callable(value)
    return value
