"""A pool of images without main labels (a folder or .zip, any shape), decoded once and cached like ImageFolder."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from auxray.data.imagefolder import (
    _Source,
    _strip_wrapper,
    cache_path,
    check_source_path,
    decode_names,
    load_cache,
    save_atomic,
)
from auxray.errors import UserError

log = logging.getLogger(__name__)

CACHE_KIND = "unlabeled"


@dataclass
class UnlabeledImages:
    """Decoded images (uint8 [N, 3, S, S]) and their keys: posix paths below the pool's root, wrapper folders
    dropped as for ImageFolder trees."""

    x: Tensor
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def _list_pool(source: _Source, path: Path) -> tuple[list[str], str]:
    """The pool's image keys and the wrapper prefix they are stored under; a UserError when it holds none."""
    keys, prefix = _strip_wrapper(source.files())
    if not keys:
        raise UserError(f"no images in the unlabelled pool {path}")
    return keys, prefix


def unlabeled_keys(path: str | Path) -> list[str]:
    """The keys of the pool's images, in the order load_unlabeled gives them, listed without decoding."""
    path = Path(path).expanduser()
    check_source_path(path, "unlabelled pool")
    with contextlib.closing(_Source(path)) as source:
        return _list_pool(source, path)[0]


def decode_unlabeled(path: Path, image_size: int) -> UnlabeledImages:
    """Decode every image under `path` (flat, class folders or train/test splits alike; folder names are ignored)."""
    with contextlib.closing(_Source(path)) as source:
        keys, prefix = _list_pool(source, path)
        return UnlabeledImages(decode_names(source, [prefix + k for k in keys], image_size), keys)


def load_unlabeled(path: str | Path, image_size: int, cache_dir: str | Path | None = None) -> UnlabeledImages:
    """The decoded unlabelled pool at `path` (a folder or .zip), from the tensor cache when it is there."""
    path = Path(path).expanduser()
    check_source_path(path, "unlabelled pool")
    target = cache_path(path, image_size, cache_dir, kind=CACHE_KIND)
    blob = load_cache(target, ("x", "keys"))
    if blob is not None:
        return UnlabeledImages(blob["x"], blob["keys"])
    t0 = time.perf_counter()
    pool = decode_unlabeled(path, image_size)
    log.info("decoded %d unlabelled images from %s in %.1f s", len(pool), path, time.perf_counter() - t0)
    save_atomic({"x": pool.x, "keys": pool.keys}, target)
    return pool
