"""auxray.data: loaders (CIFAR batches, ImageFolder folder/zip, cache), splits, batch iteration, rotation, synthetic."""

from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg

import auxray.data.imagefolder as imagefolder
from auxray.config import DataConfig
from auxray.data import BatchIterator, TensorData, build_data, rotate_batch
from auxray.data.cifar import CIFAR10_CLASSES, load_cifar10
from auxray.data.imagefolder import cache_path, load_imagefolder
from auxray.data.splits import limit_test_set, make_splits
from auxray.data.synthetic import make_synthetic
from auxray.data.transforms import CIFAR_MEAN, CIFAR_STD, normalize, random_crop_flip
from auxray.errors import UserError

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"ant": (250, 10, 10), "bee": (10, 250, 10), "cow": (10, 10, 250)}


def _jpeg(colour: tuple[int, int, int], h: int, w: int) -> bytes:
    img = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, h, w).contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return encode_jpeg(img, quality=95).numpy().tobytes()


def _tree(counts: dict[str, int], split: str | None, h: int = 8, w: int = 8) -> dict[str, bytes]:
    """Relative path -> JPEG bytes; each class is a solid colour so labels can be checked from pixels."""
    files = {}
    for cls, n in counts.items():
        for i in range(n):
            rel = f"{cls}/{i:03d}.jpg" if split is None else f"{split}/{cls}/{i:03d}.jpg"
            files[rel] = _jpeg(COLOURS[cls], h, w)
    return files


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    return root


def _write_zip(path: Path, files: dict[str, bytes], wrapper: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for rel, blob in files.items():
            z.writestr(wrapper + rel, blob)
        z.writestr(wrapper + "train/.DS_Store", b"junk")
    return path


def _split_tree() -> dict[str, bytes]:
    return {**_tree({"cow": 4, "ant": 5, "bee": 6}, "train"), **_tree({"ant": 2, "bee": 2, "cow": 2}, "test")}


def _assert_colour_labels(data: TensorData, classes: list[str]) -> None:
    means = data.x.float().mean(dim=(2, 3))
    expected = torch.tensor([COLOURS[classes[int(c)]] for c in data.y], dtype=torch.float32)
    assert (means - expected).abs().max() < 12


def _write_cifar_batches(folder: Path, per_batch: int = 20, test: int = 10) -> None:
    """A tiny fake ``cifar-10-batches-py``: pixel (c, 0, 0) of image i holds (i + c) % 256, labels i % 10."""
    folder.mkdir(parents=True)
    start = 0
    for name, n in [(f"data_batch_{k}", per_batch) for k in range(1, 6)] + [("test_batch", test)]:
        data = np.zeros((n, 3072), dtype=np.uint8)
        ids = np.arange(start, start + n)
        for c in range(3):
            data[:, c * 1024] = (ids + c) % 256
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [int(i % 10) for i in ids]}, f)
        start = 0 if name == "data_batch_5" else start + n
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f)


# ---- loaders -------------------------------------------------------------------------------------


def test_tensordata_subset_and_length_check() -> None:
    d = TensorData(torch.arange(10).view(10, 1), torch.arange(10))
    sub = d.subset([7, 2])
    assert len(sub) == 2 and sub.y.tolist() == [7, 2] and sub.x.flatten().tolist() == [7, 2]
    with pytest.raises(ValueError, match="x has 3 rows but y has 2"):
        TensorData(torch.zeros(3, 1), torch.zeros(2))


def test_imagefolder_zip_and_folder_decode_the_same(tmp_path: Path) -> None:
    files = _split_tree()
    zipped = load_imagefolder(_write_zip(tmp_path / "tiny.zip", files, wrapper="tiny/"), 8, tmp_path / "cache")
    folder = load_imagefolder(_write_folder(tmp_path / "tree", files), 8, tmp_path / "cache")
    assert zipped.classes == folder.classes == ["ant", "bee", "cow"]
    assert zipped.train.x.shape == (15, 3, 8, 8) and zipped.train.x.dtype == torch.uint8
    assert torch.bincount(zipped.train.y).tolist() == [5, 6, 4]
    assert torch.bincount(zipped.test.y).tolist() == [2, 2, 2]
    assert torch.equal(zipped.train.x, folder.train.x) and torch.equal(zipped.test.y, folder.test.y)
    _assert_colour_labels(zipped.train, zipped.classes)
    _assert_colour_labels(zipped.test, zipped.classes)


def test_imagefolder_cache_is_used_and_keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _write_zip(tmp_path / "tiny.zip", _split_tree())
    first = load_imagefolder(source, 8, tmp_path / "cache")
    target = cache_path(source, 8, tmp_path / "cache")
    assert target.is_file() and target.parent == tmp_path / "cache"
    assert cache_path(source, 16, tmp_path / "cache") != target

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again despite a cache")

    monkeypatch.setattr(imagefolder, "decode_imagefolder", no_decode)
    again = load_imagefolder(source, 8, tmp_path / "cache")
    assert torch.equal(first.train.x, again.train.x) and again.classes == first.classes
    _write_zip(source, _tree({"ant": 1, "bee": 1}, "train"))
    assert cache_path(source, 8, tmp_path / "cache") != target
    with pytest.raises(AssertionError, match="decoded again"):
        load_imagefolder(source, 8, tmp_path / "cache")


def test_imagefolder_single_tree_resized_and_split(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "flat", _tree({"ant": 10, "bee": 10, "cow": 5}, None, h=12, w=20))
    data = load_imagefolder(root, 6, tmp_path / "cache")
    assert data.train.x.shape[1:] == (3, 6, 6) and data.test.x.shape[1:] == (3, 6, 6)
    assert torch.bincount(data.test.y).tolist() == [2, 2, 1]
    assert torch.bincount(data.train.y).tolist() == [8, 8, 4]
    _assert_colour_labels(data.train, data.classes)


def test_cifar_batches_layout_folder_or_parent(tmp_path: Path) -> None:
    _write_cifar_batches(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        data = load_cifar10(root)
        assert data.classes == CIFAR10_CLASSES
        assert data.train.x.shape == (100, 3, 32, 32) and data.test.x.shape == (10, 3, 32, 32)
        assert data.train.x[37, :, 0, 0].tolist() == [37, 38, 39] and int(data.train.y[37]) == 7
        assert data.train.x[37, :, 0, 1].tolist() == [0, 0, 0]
    small = load_cifar10(tmp_path, image_size=16)
    assert small.train.x.shape == (100, 3, 16, 16)


def test_cifar_download_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, download))
            _write_cifar_batches(Path(root) / "cifar-10-batches-py")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    with pytest.raises(UserError, match=f"data root not found: {tmp_path / 'dl'} \\(set data.download: true"):
        load_cifar10(tmp_path / "dl")
    assert calls == []
    data = load_cifar10(tmp_path / "dl", download=True)
    assert calls == [(str(tmp_path / "dl"), True)] and len(data.train) == 100


def test_missing_root_is_a_user_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "cifar.zip"
    for dataset in ("cifar10", "imagefolder"):
        with pytest.raises(UserError, match="nowhere"):
            build_data(DataConfig(dataset=dataset, root=str(missing), cache_dir=str(tmp_path)))


def test_cifar10_rejects_other_classes_and_empty_trees(tmp_path: Path) -> None:
    source = _write_zip(tmp_path / "tiny.zip", _split_tree())
    with pytest.raises(UserError, match="imagefolder"):
        build_data(DataConfig(dataset="cifar10", root=str(source), cache_dir=str(tmp_path / "c")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        build_data(DataConfig(dataset="imagefolder", root=str(tmp_path / "empty"), cache_dir=str(tmp_path / "c")))


def test_build_data_imagefolder_bundle(tmp_path: Path) -> None:
    source = _write_zip(tmp_path / "tiny.zip", _split_tree())
    cfg = DataConfig(
        dataset="imagefolder",
        root=str(source),
        cache_dir=str(tmp_path / "c"),
        image_size=8,
        labeled_fraction=1.0,
        outer_fraction=0.25,
        val_fraction=0.25,
        test_limit=3,
    )
    b = build_data(cfg)
    assert (b.num_classes, b.classes, b.task, b.in_channels, b.image_size) == (
        3,
        ["ant", "bee", "cow"],
        "classification",
        3,
        8,
    )
    # Per class (ant 5, bee 6, cow 4 images): aux and val take round(0.25 * n) each, train the rest.
    assert torch.bincount(b.outer.y, minlength=3).tolist() == [1, 2, 1]
    assert torch.bincount(b.val.y, minlength=3).tolist() == [1, 2, 1]
    assert torch.bincount(b.train.y, minlength=3).tolist() == [3, 2, 2]
    assert sorted(b.test.y.tolist()) == [0, 1, 2]


# ---- splits --------------------------------------------------------------------------------------


def _cifar_like_labels() -> torch.Tensor:
    return torch.arange(50_000) % 10


@pytest.mark.parametrize(("seed", "digest"), [(0, "792a31c5ae35563f"), (1, "3da8f0632bea7e5e")])
def test_the_outer_set_rename_keeps_the_split(seed: int, digest: str) -> None:
    """data.outer_fraction carves the very images data.aux_fraction did (the digests are of the train / held-out /
    val indices computed at 9dbb6bd, before the rename), so the committed tables' runs stay reproducible."""
    s = make_splits(
        _cifar_like_labels(),
        50_000,
        None,
        10,
        labeled_fraction=0.05,
        labeled_per_class=None,
        outer_fraction=0.1,
        val_fraction=0.1,
        test_limit=None,
        seed=seed,
    )
    got = hashlib.sha256(b"".join(t.numpy().tobytes() for t in (s.train, s.outer, s.val))).hexdigest()[:16]
    assert got == digest


def test_split_sizes_stratified_and_disjoint() -> None:
    labels = _cifar_like_labels()
    s = make_splits(
        labels,
        50_000,
        torch.arange(10_000) % 10,
        10_000,
        labeled_fraction=0.05,
        labeled_per_class=None,
        outer_fraction=0.1,
        val_fraction=0.1,
        test_limit=None,
        seed=0,
    )
    labelled = torch.cat([s.train, s.outer, s.val])
    assert len(labelled) == 2_500 and len(set(labelled.tolist())) == 2_500
    assert torch.bincount(labels[labelled]).tolist() == [250] * 10
    assert torch.bincount(labels[s.outer]).tolist() == [25] * 10
    assert torch.bincount(labels[s.val]).tolist() == [25] * 10
    assert torch.bincount(labels[s.train]).tolist() == [200] * 10
    assert len(s.test) == 10_000
    per_class = make_splits(
        labels,
        50_000,
        None,
        5,
        labeled_fraction=0.05,
        labeled_per_class=7,
        outer_fraction=0.0,
        val_fraction=0.0,
        test_limit=None,
        seed=0,
    )
    assert len(per_class.train) == 70 and len(per_class.outer) == 0 and len(per_class.val) == 0


def test_split_reproducible_and_seed_dependent() -> None:
    labels = _cifar_like_labels()
    kw = dict(labeled_fraction=0.05, labeled_per_class=None, outer_fraction=0.1, val_fraction=0.1, test_limit=None)
    a = make_splits(labels, 50_000, None, 10, seed=3, **kw)
    b = make_splits(labels, 50_000, None, 10, seed=3, **kw)
    c = make_splits(labels, 50_000, None, 10, seed=4, **kw)
    for name in ("train", "outer", "val"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert not torch.equal(getattr(a, name), getattr(c, name))


def test_limit_takes_first_per_class() -> None:
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])
    idx = limit_test_set(labels, len(labels), 5)
    assert idx.tolist() == [0, 1, 2, 3, 4]
    assert torch.bincount(labels[limit_test_set(labels, 10, 6)]).tolist() == [2, 2, 2]
    assert limit_test_set(labels, 10, None).tolist() == list(range(10))


# ---- batch iteration -----------------------------------------------------------------------------


def _indexed(n: int) -> TensorData:
    return TensorData(torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n))


def test_rank_shards_disjoint_equal_and_covering() -> None:
    data = _indexed(103)
    seen = []
    for rank in range(4):
        it = BatchIterator(data, 5, seed=1, rank=rank, world_size=4, drop_last=True)
        ys = torch.cat([y for _, y in it])
        assert len(it) == 5 and len(ys) == 25
        seen.append(ys)
    flat = torch.cat(seen)
    assert len(set(flat.tolist())) == 100
    shards = [BatchIterator(data, 5, seed=1, rank=r, world_size=4).indices() for r in range(4)]
    assert len(set(torch.cat(shards).tolist())) == 100 and all(len(s) == 25 for s in shards)
    full = torch.cat(
        [torch.cat([y for _, y in BatchIterator(data, 7, rank=r, world_size=4, drop_last=False)]) for r in range(4)]
    )
    assert sorted(full.tolist()) == list(range(103))


def test_epochs_are_seeded_permutations() -> None:
    data = _indexed(64)
    it = BatchIterator(data, 8, seed=5)
    first = torch.cat([y for _, y in it])
    second = torch.cat([y for _, y in it])
    assert it.epoch == 2 and not torch.equal(first, second)
    assert sorted(first.tolist()) == list(range(64))
    it.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in it]), first)
    assert not torch.equal(torch.cat([y for _, y in BatchIterator(data, 8, seed=6)]), first)
    assert torch.equal(torch.cat([y for _, y in BatchIterator(data, 8, shuffle=False)]), torch.arange(64))
    assert len(BatchIterator(data, 10, drop_last=False)) == 7 and len(BatchIterator(data, 10)) == 6


def test_resume_yields_the_same_remaining_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    data = TensorData(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=gen), torch.arange(40))
    it = BatchIterator(data, 6, seed=2, augment=True)
    it.set_epoch(3)
    stream = iter(it)
    for _ in range(2):
        next(stream)
    state = it.state_dict()
    rest = list(stream) + list(it)
    resumed = BatchIterator(data, 6, seed=2, augment=True)
    resumed.load_state_dict(state)
    again = list(resumed) + list(resumed)
    assert state == {"epoch": 3, "position": 2, "seed": 2} and len(rest) == len(again) == 4 + 6
    for (xa, ya), (xb, yb) in zip(rest, again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(ValueError, match="state was saved with seed 2, this iterator uses seed 9"):
        BatchIterator(data, 6, seed=9).load_state_dict(state)


def test_infinite_cycles_epochs() -> None:
    it = BatchIterator(_indexed(10), 4, seed=0)
    stream = it.infinite()
    ys = torch.cat([next(stream)[1] for _ in range(6)])
    assert it.epoch == 2 and len(ys) == 24
    assert not torch.equal(ys[:8], ys[8:16])
    with pytest.raises(ValueError, match="3 samples over 1 ranks make no batch of 4"):
        next(BatchIterator(_indexed(3), 4).infinite())


def test_images_are_normalised_and_float_data_passes_through() -> None:
    x = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    xb, _ = next(iter(BatchIterator(TensorData(x, torch.zeros(8, dtype=torch.long)), 8, shuffle=False)))
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    assert xb.dtype == torch.float32 and torch.allclose(xb, (x.float() / 255 - mean) / std, atol=1e-6)
    feats = torch.randn(8, 5)
    fb, yb = next(iter(BatchIterator(TensorData(feats, torch.randn(8, 3)), 8, shuffle=False, augment=True)))
    assert torch.equal(fb, feats) and yb.shape == (8, 3)


def test_crop_flip_is_a_padded_crop_and_deterministic() -> None:
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, random_crop_flip(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    kinds = set()
    for i in range(16):
        crops = [padded[i, :, a : a + 8, b : b + 8] for a in range(9) for b in range(9)]
        plain = any(torch.equal(out[i], c) for c in crops)
        flipped = any(torch.equal(out[i], c.flip(-1)) for c in crops)
        assert plain or flipped
        kinds.add("plain" if plain else "flipped")
    assert kinds == {"plain", "flipped"}
    assert normalize(x).dtype == torch.float32


# ---- rotation and synthetic ----------------------------------------------------------------------


def test_rotation_labels_undo_the_rotation() -> None:
    x = torch.randn(64, 3, 6, 6)
    x_rot, k = rotate_batch(x, generator=torch.Generator().manual_seed(0))
    assert set(k.tolist()) == {0, 1, 2, 3} and k.dtype == torch.long
    back = torch.stack([torch.rot90(r, -int(j), dims=(-2, -1)) for r, j in zip(x_rot, k)])
    assert torch.equal(back, x)
    assert not torch.equal(x_rot, x)
    assert torch.equal(rotate_batch(x, generator=torch.Generator().manual_seed(0))[1], k)


def test_synthetic_helpful_correlates_and_harmful_does_not() -> None:
    d = make_synthetic(5_000, seed=0)
    corr = torch.corrcoef(d.y.T)
    assert d.x.shape == (5_000, 20) and d.y.shape == (5_000, 3)
    assert corr[0, 1] > 0.5 and abs(float(corr[0, 2])) < 0.1 and abs(float(corr[1, 2])) < 0.1
    assert torch.equal(make_synthetic(50, seed=1).y, make_synthetic(50, seed=1).y)
    b = build_data(DataConfig(dataset="synthetic", labeled_fraction=0.1))
    assert (b.task, b.num_classes, b.image_size) == ("regression", 0, 0)
    assert len(b.train) + len(b.outer) + len(b.val) == 1_000 and b.train.y.shape[1] == 3
    assert len(b.test) == 2_000


# ---- the real CIFAR-10 zip -----------------------------------------------------------------------


def test_real_cifar10_zip(cifar_zip: Path) -> None:
    cfg = DataConfig(dataset="cifar10", root=str(cifar_zip), cache_dir=str(REPO / ".auxray_cache"))
    data = load_cifar10(cifar_zip, cache_dir=cfg.cache_dir)
    assert data.classes == CIFAR10_CLASSES
    assert data.train.x.shape == (50_000, 3, 32, 32) and data.test.x.shape == (10_000, 3, 32, 32)
    assert torch.bincount(data.train.y).tolist() == [5_000] * 10
    assert torch.bincount(data.test.y).tolist() == [1_000] * 10
    b = build_data(cfg)
    assert len(b.train) + len(b.outer) + len(b.val) == 2_500 and len(b.test) == 10_000
    assert torch.bincount(b.outer.y).tolist() == [25] * 10
