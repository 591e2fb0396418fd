"""Checkpoint files: atomic writes and RNG capture, so an interrupted run resumes bit for bit. A checkpoint holds
only tensors, dicts, lists, tuples, strings, numbers, booleans and None, and is read with
``torch.load(weights_only=True)``: opening someone else's checkpoint cannot run code."""

from __future__ import annotations

import os
import pickle
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auxray.errors import UserError

LATEST = "latest.pt"
BEST = "best.pt"
_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


def rng_state() -> dict[str, Any]:
    """Every global RNG the loop may touch, as tensors and numbers (numpy's key array becomes a tensor)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "key": torch.from_numpy(np.array(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(obj: Any, where: str = "state") -> Any:
    """`obj` with numpy scalars and arrays turned into numbers and tensors; TypeError naming the entry for anything
    else that torch.load(weights_only=True) would refuse (a pickled object). Unchanged containers are kept as they
    are (a module's state_dict keeps its OrderedDict and version metadata)."""
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, Mapping):
        items = {k: plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        if all(items[k] is v for k, v in obj.items()) and isinstance(obj, dict):
            return obj
        return dict(items)
    if isinstance(obj, (list, tuple)):
        values = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if all(a is b for a, b in zip(values, obj)) and type(obj) in (list, tuple):
            return obj
        return values if isinstance(obj, list) else tuple(values)
    raise TypeError(
        f"checkpoint entry {where} is a {type(obj).__name__}; checkpoints hold tensors, numbers, "
        "strings and containers of them only"
    )


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (temp file then rename): a crash mid-write never leaves a torn checkpoint. The state is
    made plain first (see :func:`plain`), so the file loads with weights_only=True."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(plain(state), tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint onto the CPU, refusing pickled objects (weights_only=True)."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise UserError(
            f"checkpoint {path} holds a pickled object{what}, not plain data, so it is not loaded "
            "(an older auxray or another program wrote it)"
        ) from None
