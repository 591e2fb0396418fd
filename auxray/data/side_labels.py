"""CIFAR-10 side labels for data.aux_table: class attributes given on part of the images, a pixel statistic and a
fixed random column (harmful by construction), keyed by image path and made reproducibly from a seed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch import Tensor

from auxray.data.cifar import load_cifar10

# Class-level attributes a person answers at a glance, each given on GIVEN_FRACTION of the images (as the attribute
# annotations of AuxiLearn's CUB experiments cover part of the images) and missing on the rest.
CLASS_ATTRIBUTES: dict[str, frozenset[str]] = {
    "animal": frozenset({"bird", "cat", "deer", "dog", "frog", "horse"}),
    "flies": frozenset({"airplane", "bird"}),
    "road_vehicle": frozenset({"automobile", "truck"}),
}
GIVEN_FRACTION = 0.5
BRIGHTNESS = "brightness"  # mean pixel value in [0, 1], on every image
RANDOM = "random"  # a fixed random class per image, on every image: nothing in the image predicts it
RANDOM_CLASSES = 10
KEY = "path"
SEED = 0


def image_brightness(images: Tensor) -> np.ndarray:
    """Each uint8 image's [N, C, H, W] mean pixel value scaled to [0, 1], as float32."""
    return (images.double().mean(dim=(1, 2, 3)) / 255).numpy().astype(np.float32)


def _given(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """A mask holding exactly round(fraction * n) True entries at random places."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: round(fraction * n)]] = True
    return mask


def side_label_table(
    keys: Sequence[str],
    classes: Sequence[str],
    brightness: np.ndarray,
    seed: int = SEED,
    given_fraction: float = GIVEN_FRACTION,
) -> pa.Table:
    """The side-label table of images `keys` whose class names are `classes`: each CLASS_ATTRIBUTES column 0/1 on
    its own random `given_fraction` of the rows and null elsewhere, `brightness` and a RANDOM column on every row.
    The same inputs and seed give the same table."""
    if not len(keys) == len(classes) == len(brightness):
        raise ValueError(f"{len(keys)} keys, {len(classes)} classes and {len(brightness)} brightness values")
    rng = np.random.default_rng(seed)
    names = np.asarray(classes)
    columns: dict[str, pa.Array] = {KEY: pa.array(list(keys), type=pa.string())}
    for attribute, members in CLASS_ATTRIBUTES.items():
        values = np.isin(names, sorted(members)).astype(np.int8)
        columns[attribute] = pa.array(values, mask=~_given(rng, len(keys), given_fraction))
    columns[BRIGHTNESS] = pa.array(np.asarray(brightness, dtype=np.float32))
    columns[RANDOM] = pa.array(rng.integers(RANDOM_CLASSES, size=len(keys)).astype(np.int8))
    return pa.table(columns)


def cifar10_side_labels(root: str | Path, seed: int = SEED, cache_dir: str | Path | None = None) -> pa.Table:
    """The side-label table of CIFAR-10's training images at `root` (decoded once, through the image cache)."""
    data = load_cifar10(root, cache_dir=cache_dir)
    classes = [data.classes[int(y)] for y in data.train.y]
    return side_label_table(data.train_keys, classes, image_brightness(data.train.x), seed)


def write_side_labels(table: pa.Table, out: str | Path) -> Path:
    """Write `table` as Parquet (zstd) at `out`, its folder made if needed."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return path
