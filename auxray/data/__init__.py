"""Data sets, few-label splits, tensor caches, batch iteration and augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from auxray.config import DataConfig
from auxray.data.batches import BatchIterator
from auxray.data.cifar import load_cifar10, needs_download
from auxray.data.imagefolder import ImageFolderData, load_imagefolder
from auxray.data.rotation import rotate_batch
from auxray.data.splits import SplitIndices, make_splits
from auxray.data.synthetic import TARGETS, make_synthetic
from auxray.data.tensors import TensorData
from auxray.errors import UserError

__all__ = ["BatchIterator", "DataBundle", "TensorData", "build_data", "check_source", "rotate_batch"]

SYNTHETIC_POOL = 10_000
SYNTHETIC_TEST = 2_000
SYNTHETIC_DIM = 20


@dataclass
class DataBundle:
    """The four splits of a run and what the model needs to know about them."""

    train: TensorData
    aux: TensorData
    val: TensorData
    test: TensorData
    num_classes: int
    classes: list[str]
    task: Literal["classification", "regression"]
    in_channels: int
    image_size: int
    split_indices: SplitIndices | None = None


def _splits(cfg: DataConfig, pool: TensorData, test: TensorData) -> SplitIndices:
    """Few-label splits of the pool and the (optionally limited) test set."""
    labels = None if pool.y.is_floating_point() else pool.y
    test_labels = None if test.y.is_floating_point() else test.y
    return make_splits(
        labels,
        len(pool),
        test_labels,
        len(test),
        labeled_fraction=cfg.labeled_fraction,
        labeled_per_class=cfg.labeled_per_class,
        aux_fraction=cfg.aux_fraction,
        val_fraction=cfg.val_fraction,
        test_limit=cfg.test_limit,
        seed=cfg.seed,
    )


def _bundle(cfg: DataConfig, pool: TensorData, test: TensorData, classes: list[str]) -> DataBundle:
    """Apply the splits and describe the data."""
    idx = _splits(cfg, pool, test)
    regression = pool.y.is_floating_point()
    images = pool.x.dim() == 4
    return DataBundle(
        train=pool.subset(idx.train),
        aux=pool.subset(idx.aux),
        val=pool.subset(idx.val),
        test=test.subset(idx.test),
        num_classes=0 if regression else len(classes),
        classes=classes,
        task="regression" if regression else "classification",
        in_channels=int(pool.x.shape[1]) if images else 1,
        image_size=int(pool.x.shape[-1]) if images else 0,
        split_indices=idx,
    )


def check_source(cfg: DataConfig) -> None:
    """Fail with one line when the data source cannot be there at load time (a missing root that will not be
    downloaded): a stat, so callers check it before they open anything (a tracking run, Ray)."""
    if cfg.dataset == "synthetic":
        return
    root = Path(cfg.root).expanduser()
    if cfg.dataset == "cifar10":
        if needs_download(root) and not cfg.download:
            found = "data root is empty" if root.exists() else "data root not found"
            raise UserError(f"{found}: {root} (set data.download: true to fetch CIFAR-10 there)")
    elif not root.exists():
        raise UserError(f"data root not found: {root}")


def load_images(cfg: DataConfig) -> ImageFolderData:
    """Decoded train/test images for an image data set (cifar10 or imagefolder)."""
    check_source(cfg)
    root = Path(cfg.root).expanduser()
    if cfg.dataset == "cifar10":
        return load_cifar10(root, image_size=cfg.image_size, cache_dir=cfg.cache_dir, download=cfg.download)
    return load_imagefolder(root, cfg.image_size, cfg.cache_dir)


def build_data(cfg: DataConfig) -> DataBundle:
    """Load the configured data set and carve the train / aux / val / test splits."""
    if cfg.dataset == "synthetic":
        full = make_synthetic(SYNTHETIC_POOL + SYNTHETIC_TEST, SYNTHETIC_DIM, seed=cfg.seed)
        pool = full.subset(range(SYNTHETIC_POOL))
        test = full.subset(range(SYNTHETIC_POOL, SYNTHETIC_POOL + SYNTHETIC_TEST))
        return _bundle(cfg, pool, test, list(TARGETS))
    images = load_images(cfg)
    return _bundle(cfg, images.train, images.test, images.classes)
