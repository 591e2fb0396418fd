"""CIFAR-10 as uint8 tensors, from the official python batches or from an ImageFolder folder / zip."""

from __future__ import annotations

import dataclasses
import fcntl
import pickle
from pathlib import Path

import numpy as np
import torch

from auxray.data.imagefolder import ImageFolderData, imagefolder_train_keys, load_imagefolder
from auxray.data.tensors import TensorData
from auxray.data.transforms import resize_images
from auxray.errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
DOWNLOAD_ARCHIVE = "cifar-10-python.tar.gz"  # what torchvision fetches before it extracts BATCHES_DIR
DOWNLOAD_LOCK = ".auxray-download.lock"


def find_batches_dir(root: Path) -> Path | None:
    """The ``cifar-10-batches-py`` folder: `root` itself or a child of it; None when neither holds the batches."""
    for candidate in (root, root / BATCHES_DIR):
        if (candidate / TEST_BATCH).is_file() and all((candidate / b).is_file() for b in TRAIN_BATCHES):
            return candidate
    return None


def _read_batches(folder: Path, names: list[str]) -> TensorData:
    """Concatenate pickled batches (``data`` uint8 [n, 3072], ``labels``) into uint8 [N, 3, 32, 32]."""
    xs, ys = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        xs.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.extend(entry[b"labels"])
    return TensorData(torch.from_numpy(np.concatenate(xs)), torch.tensor(ys, dtype=torch.long))


def _class_names(folder: Path) -> list[str]:
    """Label names from ``batches.meta`` (the official order), or the standard list when the file is absent."""
    meta = folder / "batches.meta"
    if not meta.is_file():
        return list(CIFAR10_CLASSES)
    with open(meta, "rb") as f:
        names = pickle.load(f, encoding="bytes")[b"label_names"]
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _batch_keys(split: str, n: int) -> list[str]:
    """The keys of a split's n images in the official batches: ``train/{i:05d}`` by position."""
    return [f"{split}/{i:05d}" for i in range(n)]


def load_cifar_batches(folder: Path) -> ImageFolderData:
    """The official python release: 50,000 train and 10,000 test images, keyed ``train/{i:05d}`` and
    ``test/{i:05d}`` by their position in the batches (train batches concatenated in order)."""
    train, test = _read_batches(folder, TRAIN_BATCHES), _read_batches(folder, [TEST_BATCH])
    return ImageFolderData(
        _class_names(folder), train, test, _batch_keys("train", len(train)), _batch_keys("test", len(test))
    )


def cifar10_train_keys(root: str | Path) -> list[str] | None:
    """The keys of the training images load_cifar10 gives for `root`, in its order, without decoding an image (the
    official batches are only counted); None while CIFAR-10 is still to be downloaded there."""
    path = Path(root).expanduser()
    if needs_download(path):
        return None
    if path.is_dir() and (batches := find_batches_dir(path)) is not None:
        count = 0
        for name in TRAIN_BATCHES:
            with open(batches / name, "rb") as f:
                count += len(pickle.load(f, encoding="bytes")[b"labels"])
        return _batch_keys("train", count)
    return imagefolder_train_keys(path)


def download_cifar10(root: Path) -> Path:
    """Fetch the official archive into `root` with torchvision (needs network access) and return the batches folder;
    a failed download is one line naming the folder to fill by hand."""
    from torchvision.datasets import CIFAR10

    root.mkdir(parents=True, exist_ok=True)
    try:
        with open(root / DOWNLOAD_LOCK, "w") as lock:  # data-parallel workers on one node download once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if find_batches_dir(root) is None:
                CIFAR10(str(root), train=True, download=True)
    except Exception as exc:  # network, disk or archive errors all mean the same to the user
        reason = " ".join(str(exc).split())
        raise UserError(
            f"could not download CIFAR-10 into {root} ({type(exc).__name__}: {reason}); "
            f"put {BATCHES_DIR} or an ImageFolder tree there, or set data.root"
        ) from None
    return root / BATCHES_DIR


def needs_download(path: Path) -> bool:
    """True when `path` holds no CIFAR-10 yet: missing, or a folder with nothing but a partial download."""
    if not path.exists():
        return True
    if not path.is_dir() or find_batches_dir(path) is not None:
        return False
    return all(p.name in (BATCHES_DIR, DOWNLOAD_ARCHIVE, DOWNLOAD_LOCK) for p in path.iterdir())


def load_cifar10(
    root: str | Path, *, image_size: int = 32, cache_dir: str | Path | None = None, download: bool = False
) -> ImageFolderData:
    """CIFAR-10 from `root`: a ``cifar-10-batches-py`` folder (or its parent), an ImageFolder folder, or a zip;
    with `download`, a missing or empty `root` is filled from the official release first."""
    path = Path(root).expanduser()
    if needs_download(path):
        if not download:
            found = "data root is empty" if path.exists() else "data root not found"
            raise UserError(f"{found}: {path} (set data.download: true to fetch CIFAR-10 there)")
        data = load_cifar_batches(download_cifar10(path))
    elif path.is_dir() and (batches := find_batches_dir(path)) is not None:
        data = load_cifar_batches(batches)
    else:
        data = load_imagefolder(path, image_size, cache_dir)
        if data.classes != CIFAR10_CLASSES:
            raise UserError(f"{path} holds classes {data.classes}, not CIFAR-10's; use data.dataset: imagefolder")
        return data
    if image_size != 32:
        data = dataclasses.replace(
            data,
            train=TensorData(resize_images(data.train.x, image_size), data.train.y),
            test=TensorData(resize_images(data.test.x, image_size), data.test.y),
        )
    return data
