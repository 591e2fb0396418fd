"""Data sets, few-label splits, tensor caches, batch iteration and augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from auxray.config import DataConfig
from auxray.data.aux_table import ColumnGroup, TableColumns, check_table, read_table_columns
from auxray.data.batches import BatchIterator, derive_seed
from auxray.data.cifar import cifar10_train_keys, load_cifar10, needs_download
from auxray.data.imagefolder import ImageFolderData, imagefolder_train_keys, load_imagefolder
from auxray.data.rotation import rotate_batch
from auxray.data.splits import SplitIndices, make_splits
from auxray.data.synthetic import TARGETS, make_synthetic
from auxray.data.tensors import UNLABELED, TensorData, with_columns
from auxray.data.unlabeled import load_unlabeled, unlabeled_keys
from auxray.errors import UserError

__all__ = [
    "UNLABELED",
    "BatchIterator",
    "ColumnGroup",
    "DataBundle",
    "TableColumns",
    "TensorData",
    "build_data",
    "check_source",
    "rotate_batch",
]
NOISE_TASK = "noise_labels"

SYNTHETIC_POOL = 10_000
SYNTHETIC_TEST = 2_000
SYNTHETIC_DIM = 20


@dataclass
class DataBundle:
    """The four splits of a run and what the model needs to know about them."""

    train: TensorData
    outer: TensorData  # held out: the outer loss is the main-task loss on it
    val: TensorData
    test: TensorData
    num_classes: int
    classes: list[str]
    task: Literal["classification", "regression"]
    in_channels: int
    image_size: int
    split_indices: SplitIndices | None = None
    # Images without a main label (y's main entry is UNLABELED) that auxiliary losses also train on.
    unlabeled: TensorData | None = None
    # Per-image auxiliary labels carried in y[:, 1:] (noise labels, table columns): which columns each task reads.
    groups: list[ColumnGroup] = field(default_factory=list)


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
        outer_fraction=cfg.outer_fraction,
        val_fraction=cfg.val_fraction,
        test_limit=cfg.test_limit,
        seed=cfg.seed,
    )


def _bundle(
    cfg: DataConfig,
    pool: TensorData,
    test: TensorData,
    classes: list[str],
    extra: tuple[TensorData, list[ColumnGroup]] | None = None,
) -> DataBundle:
    """Apply the splits and describe the data. `extra` is (the pool with its auxiliary columns attached, their
    groups): the splits are carved from the main labels and then taken from it, with the unlabelled rows."""
    idx = _splits(cfg, pool, test)
    regression = pool.y.is_floating_point()
    images = pool.x.dim() == 4
    full, groups = extra if extra is not None else (pool, [])
    labeled_rows = full if len(full) == len(pool) else full.subset(torch.arange(len(pool)))
    unlabeled = None
    if cfg.unlabeled == "rest":
        rest = torch.ones(len(pool), dtype=torch.bool)
        rest[torch.cat([idx.train, idx.outer, idx.val])] = False
        unlabeled = full.subset(torch.nonzero(rest).flatten()).without_main_labels()
    elif len(full) > len(pool):  # a pool from data.unlabeled: PATH, appended after the labelled images
        unlabeled = full.subset(torch.arange(len(pool), len(full)))
    return DataBundle(
        train=labeled_rows.subset(idx.train),
        outer=labeled_rows.subset(idx.outer),
        val=labeled_rows.subset(idx.val),
        test=test.subset(idx.test),
        num_classes=0 if regression else len(classes),
        classes=classes,
        task="regression" if regression else "classification",
        in_channels=int(pool.x.shape[1]) if images else 1,
        image_size=int(pool.x.shape[-1]) if images else 0,
        split_indices=idx,
        unlabeled=unlabeled,
        groups=groups,
    )


def _check_paths(cfg: DataConfig) -> None:
    """A one-line UserError when the data root or the unlabelled pool cannot be there at load time."""
    root = Path(cfg.root).expanduser()
    if cfg.dataset == "cifar10":
        if needs_download(root) and not cfg.download:
            found = "data root is empty" if root.exists() else "data root not found"
            raise UserError(f"{found}: {root} (set data.download: true to fetch CIFAR-10 there)")
    elif not root.exists():
        raise UserError(f"data root not found: {root}")
    if cfg.pool_path is not None and not Path(cfg.pool_path).expanduser().exists():
        raise UserError(f"data.unlabeled not found: {cfg.unlabeled}")


def _table_image_keys(cfg: DataConfig) -> list[str] | None:
    """The keys the table is matched against, as build_data makes them (the training images, then the pool's),
    listed without decoding; None while CIFAR-10 is still to be downloaded."""
    root = Path(cfg.root).expanduser()
    keys = cifar10_train_keys(root) if cfg.dataset == "cifar10" else imagefolder_train_keys(root)
    if keys is not None and cfg.pool_path is not None:
        keys += unlabeled_keys(cfg.pool_path)
    return keys


def check_source(cfg: DataConfig) -> TableColumns | None:
    """Fail with one line when the data source cannot be there at load time (a missing root that will not be
    downloaded, a missing unlabelled pool) or the auxiliary table does not fit the images (check_table): callers
    make it before they open anything (a tracking run, Ray). Returns the table's columns when there is one to
    match (for its report line)."""
    if cfg.dataset == "synthetic":
        return None
    _check_paths(cfg)
    if cfg.aux_table is None:
        return None
    return check_table(cfg.aux_table, cfg.aux_key, cfg.aux_columns, _table_image_keys(cfg))


def load_images(cfg: DataConfig) -> ImageFolderData:
    """Decoded train/test images for an image data set (cifar10 or imagefolder)."""
    _check_paths(cfg)
    root = Path(cfg.root).expanduser()
    if cfg.dataset == "cifar10":
        return load_cifar10(root, image_size=cfg.image_size, cache_dir=cfg.cache_dir, download=cfg.download)
    return load_imagefolder(root, cfg.image_size, cfg.cache_dir)


def noise_labels(n: int, num_classes: int, seed: int) -> torch.Tensor:
    """A fixed random class for each of n images: an auxiliary task harmful by construction (its labels carry
    nothing about the images), the yardstick for whether a method learns to weigh a task down."""
    gen = torch.Generator().manual_seed(derive_seed(seed, 0x4E015E))
    return torch.randint(num_classes, (n,), generator=gen)


def _with_aux_columns(
    cfg: DataConfig, aux_tasks: Sequence[str], images: ImageFolderData, table: TableColumns | None
) -> tuple[TensorData, list[ColumnGroup]] | None:
    """The training pool (plus a pool from data.unlabeled: PATH, appended) with the per-image auxiliary columns the
    tasks read: noise labels and table columns (``table`` when check_source read them already, else read here).
    None when no task reads any and no pool is appended."""
    pool, keys = images.train, list(images.train_keys)
    if cfg.pool_path is not None:
        extra = load_unlabeled(Path(cfg.pool_path).expanduser(), cfg.image_size, cfg.cache_dir)
        unlabeled_y = torch.full((len(extra.x),), UNLABELED, dtype=pool.y.dtype)
        pool = TensorData(torch.cat([pool.x, extra.x]), torch.cat([pool.y, unlabeled_y]))
        keys += extra.keys
    columns: list[torch.Tensor] = []
    groups: list[ColumnGroup] = []
    if NOISE_TASK in aux_tasks:
        columns.append(noise_labels(len(pool), len(images.classes), cfg.seed).float().unsqueeze(1))
        groups.append(ColumnGroup(NOISE_TASK, "categorical", 0, 1, len(images.classes)))
    if "table" in aux_tasks and cfg.aux_table is not None:
        if table is None:
            table = read_table_columns(cfg.aux_table, cfg.aux_key, cfg.aux_columns, keys)
        elif len(table.values) != len(keys):
            raise ValueError(f"the table's columns cover {len(table.values)} images, the data has {len(keys)}")
        offset = sum(c.shape[1] for c in columns)
        columns.append(table.values)
        groups += [ColumnGroup(g.name, g.kind, g.start + offset, g.stop + offset, g.classes) for g in table.groups]
    if not columns:
        return (pool, []) if len(pool) > len(images.train) else None
    return with_columns(pool, torch.cat(columns, dim=1)), groups


def build_data(cfg: DataConfig, aux_tasks: Sequence[str] = (), table: TableColumns | None = None) -> DataBundle:
    """Load the configured data set, attach the per-image auxiliary columns `aux_tasks` read (method.aux_task; the
    table's from `table`, check_source's result, when given), and carve the train / outer / val / test splits and the
    unlabelled pool."""
    if cfg.dataset == "synthetic":
        full = make_synthetic(SYNTHETIC_POOL + SYNTHETIC_TEST, SYNTHETIC_DIM, seed=cfg.seed)
        pool = full.subset(range(SYNTHETIC_POOL))
        test = full.subset(range(SYNTHETIC_POOL, SYNTHETIC_POOL + SYNTHETIC_TEST))
        return _bundle(cfg, pool, test, list(TARGETS))
    images = load_images(cfg)
    return _bundle(cfg, images.train, images.test, images.classes, _with_aux_columns(cfg, aux_tasks, images, table))
