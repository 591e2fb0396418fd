"""The side-label table (auxray/data/side_labels.py): made the same from the same seed, each class attribute true to
the class and given on exactly its share of the images, a random column that says nothing of the class, and the
committed table of configs/cifar10_5pct_semisup_side is the generator's output for the shipped zip (fast: the keys
are listed without decoding, a few images decoded for their brightness)."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from auxray.data.cifar import CIFAR10_CLASSES, cifar10_train_keys
from auxray.data.imagefolder import TORCHVISION_IO_DEPRECATION
from auxray.data.side_labels import (
    BRIGHTNESS,
    CLASS_ATTRIBUTES,
    GIVEN_FRACTION,
    KEY,
    RANDOM,
    RANDOM_CLASSES,
    image_brightness,
    side_label_table,
)
from tests.conftest import REPO

SHIPPED = REPO / "configs" / "cifar10_5pct_semisup_side" / "side_labels.parquet"


def _cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    """Cramér's V of two integer-coded variables: 0 when independent, 1 when one fixes the other."""
    counts = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(counts, (a, b), 1)
    expected = counts.sum(1, keepdims=True) * counts.sum(0, keepdims=True) / counts.sum()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    return float(np.sqrt(chi2 / (counts.sum() * (min(counts.shape) - 1))))


def _synthetic(n: int, seed: int, fraction: float = GIVEN_FRACTION) -> tuple[pa.Table, list[str]]:
    classes = [CIFAR10_CLASSES[i % 10] for i in range(n)]
    keys = [f"train/{c}/{i:04d}.jpg" for i, c in enumerate(classes)]
    brightness = np.linspace(0, 1, n, dtype=np.float32)
    return side_label_table(keys, classes, brightness, seed, fraction), classes


def _check(table: pa.Table, classes: list[str], fraction: float) -> None:
    """Every attribute is its class's where given, given on round(fraction * n) rows; brightness and random on all;
    the random column is near uniform and tells nothing of the class."""
    n = table.num_rows
    for attribute, members in CLASS_ATTRIBUTES.items():
        column = table.column(attribute)
        assert column.null_count == n - round(fraction * n), attribute
        given = ~np.asarray(column.is_null())
        truth = np.isin(classes, sorted(members))
        assert np.array_equal(column.drop_null().to_numpy(), truth[given].astype(np.int8)), attribute
    assert table.column(BRIGHTNESS).null_count == table.column(RANDOM).null_count == 0
    random = table.column(RANDOM).to_numpy().astype(np.int64)
    assert set(np.unique(random)) == set(range(RANDOM_CLASSES))
    class_ids = np.array([CIFAR10_CLASSES.index(c) for c in classes])
    assert _cramers_v(random, class_ids) < 0.03
    animal = table.column("animal")
    given = ~np.asarray(animal.is_null())
    assert _cramers_v(animal.drop_null().to_numpy().astype(np.int64), class_ids[given]) == pytest.approx(1)  # it bites


def test_the_same_seed_gives_the_same_table_and_another_seed_another() -> None:
    first, classes = _synthetic(20_000, seed=3)
    again, _ = _synthetic(20_000, seed=3)
    other, _ = _synthetic(20_000, seed=4)
    assert first.equals(again)
    for column in (*CLASS_ATTRIBUTES, RANDOM):
        assert not first.column(column).equals(other.column(column)), column
    assert first.column(KEY).equals(other.column(KEY)) and first.column(BRIGHTNESS).equals(other.column(BRIGHTNESS))
    _check(first, classes, GIVEN_FRACTION)
    quarter, _ = _synthetic(20_000, seed=3, fraction=0.25)
    _check(quarter, classes, 0.25)


def test_mismatched_inputs_are_an_error() -> None:
    with pytest.raises(ValueError, match="2 keys, 1 classes and 2 brightness values"):
        side_label_table(["a", "b"], ["cat"], np.zeros(2, dtype=np.float32))


def test_brightness_is_the_mean_pixel_in_0_1() -> None:
    images = torch.zeros(3, 3, 2, 2, dtype=torch.uint8)
    images[1] = 255
    images[2, 0] = 255  # one channel of three at full
    np.testing.assert_allclose(image_brightness(images), [0.0, 1.0, 1 / 3], rtol=1e-6)


def test_the_committed_table_is_the_generators_for_the_shipped_zip(cifar_zip: Path) -> None:
    """Regenerated from the zip's keys (class from each key's folder) and seed 0, with the committed brightness: the
    same table; the brightness of a few images, decoded as a run decodes them, is the committed one."""
    assert SHIPPED.stat().st_size < 1_000_000
    shipped = pq.read_table(SHIPPED)
    keys = cifar10_train_keys(cifar_zip)
    assert keys is not None and shipped.column(KEY).to_pylist() == keys
    classes = [key.split("/")[1] for key in keys]
    brightness = shipped.column(BRIGHTNESS).to_numpy()
    assert side_label_table(keys, classes, brightness, seed=0).equals(shipped)
    _check(shipped, classes, GIVEN_FRACTION)
    with zipfile.ZipFile(cifar_zip) as archive:
        rows = np.random.default_rng(0).choice(len(keys), size=10, replace=False)
        raw = [torch.frombuffer(bytearray(archive.read(keys[i])), dtype=torch.uint8) for i in rows]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCHVISION_IO_DEPRECATION, category=DeprecationWarning)
        images = torch.stack(decode_jpeg(raw, mode=ImageReadMode.RGB))
    assert np.array_equal(image_brightness(images), brightness[rows])
