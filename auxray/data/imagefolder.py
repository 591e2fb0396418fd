"""ImageFolder trees (a folder or a .zip) decoded once into uint8 tensors and cached with torch.save."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from auxray.config import data_home
from auxray.data.splits import stratified_holdout
from auxray.data.tensors import TensorData
from auxray.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
TRAIN_NAMES = ("train",)
TEST_NAMES = ("test", "val", "valid", "validation")
SINGLE_TREE_TEST_FRACTION = 0.2
CACHE_VERSION = 1
CHUNK = 2048
TORCHVISION_IO_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


@dataclass
class ImageFolderData:
    """Decoded images: class names (sorted), the train and test splits, and each row's key (the image's posix path
    below the data root, wrapper folders dropped, e.g. ``train/bird/0338.jpg``), aligned with the split's rows."""

    classes: list[str]
    train: TensorData
    test: TensorData
    train_keys: list[str]
    test_keys: list[str]


class _Source:
    """Read access to the image files of a folder or a zip archive, by posix path relative to its root."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None

    def files(self) -> list[str]:
        """Every image file, as a relative posix path."""
        if self.zip is not None:
            names = [i.filename for i in self.zip.infolist() if not i.is_dir()]
        else:
            names = [Path(d, f).relative_to(self.path).as_posix() for d, _, fs in os.walk(self.path) for f in fs]
        return sorted(n for n in names if _is_image(n))

    def read(self, name: str) -> bytes:
        """Raw bytes of one file."""
        if self.zip is not None:
            return self.zip.read(name)
        return (self.path / name).read_bytes()

    def close(self) -> None:
        """Close the zip archive, if any."""
        if self.zip is not None:
            self.zip.close()


def fingerprint(path: Path) -> str:
    """Resolved path, size and modification time (for a folder: summed over its files, with their count)."""
    if path.is_file():
        st = path.stat()
        return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    size, mtime, count = 0, 0, 0
    for d, _, fs in os.walk(path):
        for f in fs:
            st = os.stat(os.path.join(d, f))
            size, mtime, count = size + st.st_size, max(mtime, st.st_mtime_ns), count + 1
    return f"{path.resolve()}|{size}|{mtime}|{count}"


def _is_image(name: str) -> bool:
    parts = name.split("/")
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)
    return not hidden and name.lower().endswith(IMAGE_EXTENSIONS)


def _strip_wrapper(files: list[str]) -> tuple[list[str], str]:
    """Drop single enclosing folders (e.g. ``cifar10/train/...``) that are not a split or class level."""
    prefix = ""
    while files and all("/" in f for f in files):
        tops = {f.split("/", 1)[0] for f in files}
        if len(tops) != 1 or next(iter(tops)).lower() in TRAIN_NAMES + TEST_NAMES:
            break
        if all(f.count("/") < 2 for f in files):
            break
        top = next(iter(tops))
        prefix += top + "/"
        files = [f.split("/", 1)[1] for f in files]
    return files, prefix


def _layout(files: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Group files into splits of (key, class): {"train", "test"} or a single {"all"} tree."""
    tops = {f.split("/", 1)[0].lower() for f in files if "/" in f}
    split_layout = bool(tops & set(TRAIN_NAMES))
    out: dict[str, list[tuple[str, str]]] = {}
    for f in files:
        parts = f.split("/")
        if split_layout:
            split = parts[0].lower()
            if len(parts) < 3 or split not in TRAIN_NAMES + TEST_NAMES:
                continue
            out.setdefault("train" if split in TRAIN_NAMES else "test", []).append((f, parts[1]))
        elif len(parts) >= 2:
            out.setdefault("all", []).append((f, parts[0]))
    return out


def _decode_chunk(blobs: list[bytes], names: list[str], size: int) -> Tensor:
    """Decode a list of encoded images to uint8 [n, 3, size, size], JPEGs in one batched call."""
    encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCHVISION_IO_DEPRECATION, category=DeprecationWarning)
        try:
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB)
        except RuntimeError:
            images = [_decode_one(data, name) for data, name in zip(encoded, names)]
    return torch.stack([_fit(img, size) for img in images])


def _decode_one(data: Tensor, name: str) -> Tensor:
    """Decode one image of any format torchvision reads (PNG, GIF, WebP, ...) to uint8 RGB."""
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise UserError(f"cannot decode image {name}: {exc}") from None


def _fit(img: Tensor, size: int) -> Tensor:
    """Resize the shorter side to `size` and centre-crop to size x size (no-op when already that size)."""
    if img.shape[-2:] == (size, size):
        return img
    img = TF.resize(img, [size], antialias=True)
    return TF.center_crop(img, [size, size])


def decode_names(source: _Source, names: list[str], size: int) -> Tensor:
    """Decode the named files of a source, in order, to uint8 [n, 3, size, size], CHUNK files at a time."""
    x = torch.empty(len(names), 3, size, size, dtype=torch.uint8)
    for start in range(0, len(names), CHUNK):
        chunk = names[start : start + CHUNK]
        x[start : start + len(chunk)] = _decode_chunk([source.read(n) for n in chunk], chunk, size)
    return x


def decode_split(
    source: _Source, items: list[tuple[str, str]], classes: list[str], size: int, prefix: str = ""
) -> TensorData:
    """Decode one split's (key, class) items, stored in the source under `prefix` + key, into uint8 images and
    int64 labels."""
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[c] for _, c in items], dtype=torch.long)
    return TensorData(decode_names(source, [prefix + k for k, _ in items], size), y)


def default_cache_dir() -> Path:
    """Decoded-image caches live in the data home (``$AUXRAY_DATA``, else ``$XDG_CACHE_HOME/auxray``, else
    ``~/.cache/auxray``)."""
    return data_home()


def cache_path(path: Path, image_size: int, cache_dir: str | Path | None, kind: str = "") -> Path:
    """Cache file for a source, keyed by a hash of its path, size, mtime and the image size; `kind` names what
    was decoded from it when that is not the labelled tree (e.g. ``unlabeled``), so the two never share a file."""
    tag = f"|{kind}" if kind else ""
    key = hashlib.sha256(f"v{CACHE_VERSION}|{fingerprint(path)}|{image_size}{tag}".encode()).hexdigest()[:16]
    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return base / f"{path.name.replace('.', '_')}{'-' + kind if kind else ''}-{image_size}px-{key}.pt"


def check_source_path(path: Path, what: str) -> None:
    """A one-line UserError unless `path` is a folder or a zip archive (`what` names it, e.g. ``data root``)."""
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise UserError(f"{what} {path} is a file but not a zip archive")


def load_cache(target: Path, fields: tuple[str, ...]) -> dict | None:
    """The cached blob at `target`, or None when there is none or it lacks one of `fields` (an older format, to
    decode again)."""
    if not target.is_file():
        return None
    blob = torch.load(target, weights_only=True)
    if not isinstance(blob, dict) or any(f not in blob for f in fields):
        log.info("cache %s is in an older format; decoding again", target)
        return None
    return blob


@dataclass
class _Listing:
    """What a tree holds, before any decoding: class names and each split's (key, class) items, stored in the
    source under `prefix` + key."""

    classes: list[str]
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    prefix: str


def _list_source(source: _Source, path: Path) -> _Listing:
    """The splits of an opened source; a tree without a test split gets a fixed stratified one."""
    files, prefix = _strip_wrapper(source.files())
    groups = _layout(files)
    base = groups.get("train") or groups.get("all")
    if not base:
        raise UserError(f"no images in ImageFolder layout (train|test/<class>/<image> or <class>/<image>) under {path}")
    classes = sorted({c for _, c in base})
    unknown = sorted({c for _, c in groups.get("test", [])} - set(classes))
    if unknown:
        raise UserError(f"ImageFolder {path}: test classes {unknown} are missing from train")
    if groups.get("test"):
        return _Listing(classes, base, groups["test"], prefix)
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[c] for _, c in base], dtype=torch.long)
    kept, held = stratified_holdout(y, SINGLE_TREE_TEST_FRACTION, seed=0)
    return _Listing(classes, [base[i] for i in kept.tolist()], [base[i] for i in held.tolist()], prefix)


def imagefolder_train_keys(path: str | Path) -> list[str]:
    """The keys of a tree's training images, in the order load_imagefolder gives them, listed without decoding."""
    path = Path(path).expanduser()
    check_source_path(path, "data root")
    with contextlib.closing(_Source(path)) as source:
        return [k for k, _ in _list_source(source, path).train]


def decode_imagefolder(path: Path, image_size: int) -> ImageFolderData:
    """Decode every image of a folder or zip tree (no cache)."""
    with contextlib.closing(_Source(path)) as source:
        listing = _list_source(source, path)
        train = decode_split(source, listing.train, listing.classes, image_size, listing.prefix)
        test = decode_split(source, listing.test, listing.classes, image_size, listing.prefix)
    return ImageFolderData(listing.classes, train, test, [k for k, _ in listing.train], [k for k, _ in listing.test])


def save_atomic(obj: dict, target: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename, so readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_imagefolder(path: str | Path, image_size: int, cache_dir: str | Path | None = None) -> ImageFolderData:
    """Decoded images of an ImageFolder folder or zip, from the tensor cache when it is there."""
    path = Path(path).expanduser()
    check_source_path(path, "data root")
    target = cache_path(path, image_size, cache_dir)
    blob = load_cache(target, ("classes", "train", "test", "train_keys", "test_keys"))
    if blob is not None:
        return ImageFolderData(
            blob["classes"],
            TensorData(*blob["train"]),
            TensorData(*blob["test"]),
            blob["train_keys"],
            blob["test_keys"],
        )
    t0 = time.perf_counter()
    data = decode_imagefolder(path, image_size)
    log.info("decoded %d images from %s in %.1f s", len(data.train) + len(data.test), path, time.perf_counter() - t0)
    blob = {
        "classes": data.classes,
        "train": (data.train.x, data.train.y),
        "test": (data.test.x, data.test.y),
        "train_keys": data.train_keys,
        "test_keys": data.test_keys,
    }
    save_atomic(blob, target)
    return data
