"""Auxiliary table columns keyed by image path, image keys of ImageFolder trees, and unlabelled image pools."""

from __future__ import annotations

import math
import warnings
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from torchvision.io import encode_png

import auxray.data.cifar as cifar
import auxray.data.imagefolder as imagefolder
import auxray.data.unlabeled as unlabeled
from auxray.config import TableTask
from auxray.data.aux_table import ColumnGroup, check_table, read_table_columns
from auxray.data.cifar import cifar10_train_keys, load_cifar10, load_cifar_batches
from auxray.data.imagefolder import cache_path, imagefolder_train_keys, load_imagefolder, save_atomic
from auxray.data.tensors import TensorData
from auxray.data.unlabeled import load_unlabeled, unlabeled_keys
from auxray.errors import UserError
from auxray.methods.view_tasks import ColumnLoss
from tests.test_data import _write_cifar_batches, _write_folder

COLOURS = {"ant": (250, 10, 10), "bee": (10, 250, 10), "cow": (10, 10, 250)}
IMAGES = ["train/ant/000.png", "train/ant/001.png", "train/bee/000.png", "test/cow/000.png"]
nan = float("nan")


def _png(colour: tuple[int, int, int], size: int = 8) -> bytes:
    img = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, size, size).contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return encode_png(img).numpy().tobytes()


def _tree(counts: dict[str, int], split: str | None) -> dict[str, bytes]:
    """Relative path -> PNG bytes, each class a solid colour."""
    top = f"{split}/" if split else ""
    return {f"{top}{c}/{i:03d}.png": _png(COLOURS[c]) for c, n in counts.items() for i in range(n)}


def _write_zip(path: Path, files: dict[str, bytes], wrapper: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for rel, blob in files.items():
            z.writestr(wrapper + rel, blob)
    return path


def _parquet(path: Path, columns: dict[str, list]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def _csv(path: Path, columns: dict[str, list]) -> Path:
    pacsv.write_csv(pa.table(columns), path)
    return path


def _same(actual: torch.Tensor, expected: list) -> bool:
    """Equal values, NaN matching NaN."""
    return torch.allclose(actual, torch.tensor(expected, dtype=torch.float32), equal_nan=True, atol=1e-5)


def _user_error(path: Path, tasks: list[TableTask], match: str, key: str = "path") -> None:
    """Both check_table and read_table_columns fail with a one-line UserError matching `match`."""
    for call in (lambda: check_table(path, key, tasks), lambda: read_table_columns(path, key, tasks, IMAGES)):
        with pytest.raises(UserError, match=match) as err:
            call()
        assert "\n" not in str(err.value)


# ---- table columns -------------------------------------------------------------------------------


@pytest.mark.parametrize("write", [_parquet, _csv])
def test_each_kind_is_read_and_aligned_with_the_images(tmp_path: Path, write) -> None:
    table = {
        "path": ["test/cow/000.png", "./train/ant/000.png", "train\\bee\\000.png", "train/zzz/000.png"],
        "striped": [1, 0, None, 1],
        "wings": [True, False, True, False],
        "colour": ["red", "blue", "red", "green"],
        "size": [3.0, 1.0, 2.0, 100.0],
    }
    tasks = [
        TableTask(name="attrs", columns=["striped", "wings"], kind="binary"),
        TableTask(name="colour", columns=["colour"], kind="categorical"),
        TableTask(name="size", columns=["size"], kind="regression"),
    ]
    path = write(tmp_path / f"aux{'.csv' if write is _csv else '.parquet'}", table)
    check_table(path, "path", tasks)
    out = read_table_columns(path, "path", tasks, IMAGES)
    assert out.groups == [
        ColumnGroup("attrs", "binary", 0, 2, None),
        ColumnGroup("colour", "categorical", 2, 3, 3),
        ColumnGroup("size", "regression", 3, 4, None),
    ]
    assert out.matched == 3 and out.values.dtype == torch.float32 and out.values.shape == (4, 4)
    # images: ant/000 (row 1), ant/001 (no row), bee/000 (row 2), cow/000 (row 0); colours sorted blue, green, red
    z = math.sqrt(2 / 3)
    expected = [[0, 0, 0, -1 / z], [nan, nan, nan, nan], [nan, 1, 2, 0], [1, 1, 2, 1 / z]]
    assert _same(out.values, expected), out.values


def test_missing_values_are_nan_per_sample_and_column(tmp_path: Path) -> None:
    path = _parquet(
        tmp_path / "aux.parquet",
        {"path": IMAGES, "a": [1.0, nan, None, 0.0], "b": [1.5, None, nan, 4.5], "c": [None, 2, 0, 1]},
    )
    tasks = [
        TableTask(name="a", columns=["a"], kind="binary"),
        TableTask(name="b", columns=["b"], kind="regression"),
        TableTask(name="c", columns=["c"], kind="categorical", classes=4),
    ]
    out = read_table_columns(path, "path", tasks, IMAGES)
    assert _same(out.values, [[1, -1, nan], [nan, nan, 2], [nan, nan, 0], [0, 1, 1]]), out.values
    assert out.groups[2].classes == 4 and out.matched == 4


def test_class_counts_inferred_or_given(tmp_path: Path) -> None:
    path = _csv(tmp_path / "aux.csv", {"path": IMAGES, "n": [5, 1, 5, 9], "s": ["b", "a", "c", "a"]})
    inferred = read_table_columns(path, "path", [TableTask(name="n", columns=["n"], kind="categorical")], IMAGES)
    assert inferred.groups[0].classes == 3 and inferred.values[:, 0].tolist() == [1, 0, 1, 2]
    given = read_table_columns(
        path,
        "path",
        [
            TableTask(name="n", columns=["n"], kind="categorical", classes=10),
            TableTask(name="s", columns=["s"], kind="categorical", classes=5),
        ],
        IMAGES,
    )
    assert [g.classes for g in given.groups] == [10, 5]
    assert given.values.tolist() == [[5, 1], [1, 0], [5, 2], [9, 0]]


def test_regression_is_standardised_over_matching_rows(tmp_path: Path) -> None:
    path = _parquet(
        tmp_path / "aux.pq",
        {"path": IMAGES[:3] + ["elsewhere.png"], "y": [10.0, 20.0, 30.0, 1e6], "w": [1, 1, 1, 7]},
    )
    out = read_table_columns(path, "path", [TableTask(name="y", columns=["y"], kind="regression")], IMAGES)
    col = out.values[:3, 0]
    assert abs(float(col.mean())) < 1e-6 and abs(float(col.std(unbiased=False)) - 1) < 1e-5
    assert torch.isnan(out.values[3, 0]) and out.matched == 3
    with pytest.raises(UserError, match="'w'.*constant"):
        read_table_columns(path, "path", [TableTask(name="w", columns=["w"], kind="regression")], IMAGES)


def test_bad_tables_are_one_line_user_errors(tmp_path: Path) -> None:
    binary = [TableTask(name="t", columns=["t"], kind="binary")]
    with pytest.raises(UserError, match="not found"):
        check_table(tmp_path / "nope.parquet", "path", binary)
    (tmp_path / "aux.json").write_text("{}")
    _user_error(tmp_path / "aux.json", binary, "suffix")
    good = _parquet(tmp_path / "good.parquet", {"path": IMAGES, "t": [0, 1, 1, 0]})
    _user_error(good, binary, "no key column 'name'", key="name")
    _user_error(good, [TableTask(name="u", columns=["u"], kind="binary")], r"good\.parquet: no column 'u'")
    wrong = _parquet(tmp_path / "wrong.parquet", {"path": IMAGES, "t": ["x", "y", "x", "y"], "f": [0.5] * 4})
    _user_error(wrong, binary, r"wrong\.parquet: column 't'.*booleans")
    _user_error(wrong, [TableTask(name="t", columns=["t"], kind="regression")], "column 't'.*numbers")
    _user_error(wrong, [TableTask(name="f", columns=["f"], kind="categorical")], "column 'f'.*integers or strings")
    two = _csv(tmp_path / "two.csv", {"path": IMAGES, "t": [0, 1, 2, 0]})
    _user_error(two, binary, r"two\.csv: column 't'.*only 0, 1.*found 2")
    dup = _csv(tmp_path / "dup.csv", {"path": ["a.png", "./a.png", "b.png"], "t": [0, 1, 1]})
    _user_error(dup, binary, "1 repeated keys, e.g. 'a.png'")
    out_of_range = _csv(tmp_path / "range.csv", {"path": IMAGES, "c": [0, 1, 2, 3]})
    with pytest.raises(UserError, match="class 3, outside 0..2"):
        read_table_columns(
            out_of_range, "path", [TableTask(name="c", columns=["c"], kind="categorical", classes=3)], IMAGES
        )
    other = _csv(tmp_path / "other.csv", {"path": ["cat/1.png", "cat/2.png"], "t": [0, 1]})
    with pytest.raises(UserError, match=r"none of its 2 keys.*'cat/1.png'.*'train/ant/000.png'") as err:
        read_table_columns(other, "path", binary, IMAGES)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("columns", "task", "message"),
    [
        (
            {"path": ["cat/1.png", "cat/2.png"], "t": [0, 1]},
            TableTask(name="t", columns=["t"], kind="binary"),
            r"none of its 2 keys in column 'path' matches an image key",
        ),
        (
            {"path": IMAGES, "c": [0, 1, 2, 3]},
            TableTask(name="c", columns=["c"], kind="categorical", classes=3),
            r"column 'c' \(task 'c'\) holds class 3, outside 0..2",
        ),
        (
            {"path": IMAGES, "s": ["a", "b", "c", "d"]},
            TableTask(name="s", columns=["s"], kind="categorical", classes=3),
            r"column 's' \(task 's'\) has 4 distinct values but classes is 3",
        ),
        (
            {"path": IMAGES, "c": [1, 1, 1, None]},
            TableTask(name="c", columns=["c"], kind="categorical"),
            r"column 'c' \(task 'c'\) has 1 distinct values; a categorical task needs 2 or more",
        ),
        (
            {"path": IMAGES[:3] + ["elsewhere.png"], "w": [1.0, 1.0, 1.0, 7.0]},
            TableTask(name="w", columns=["w"], kind="regression"),
            r"regression column 'w' is constant over the 3 rows matching images",
        ),
    ],
)
def test_check_table_given_the_image_keys_stops_what_the_run_would_hit(
    tmp_path: Path, columns: dict[str, list], task: TableTask, message: str
) -> None:
    """With the run's image keys, the check made before anything starts fails as reading the columns would: keys
    matching no image, classes out of range or too many, a regression column constant over the matched rows."""
    path = _csv(tmp_path / "aux.csv", columns)
    with pytest.raises(UserError, match=message) as err:
        check_table(path, "path", [task], IMAGES)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"aux table {path}: ")


def test_the_match_report_counts_images_not_rows(tmp_path: Path) -> None:
    """The report line says how many of the run's images have a row: two images with one key (a pool image keyed
    like a training image) are two matches of one row."""
    path = _csv(tmp_path / "aux.csv", {"path": ["a.png", "c.png"], "t": [0, 1]})
    tasks = [TableTask(name="t", columns=["t"], kind="binary")]
    out = check_table(path, "path", tasks, ["a.png", "b.png", "./a.png"])
    assert out is not None and out.matched == 1 and out.images_matched == 2
    assert out.report(path) == f"aux table {path}: 2 of 3 images matched (66.7%)"
    assert check_table(path, "path", tasks) is None  # no image keys yet (CIFAR-10 still to be downloaded)


def test_a_float_class_column_with_gaps_reads_as_class_ids(tmp_path: Path) -> None:
    """pandas writes an integer column with missing values as floats with NaN: whole numbers are class ids, NaN
    and null are missing; a fraction is one line."""
    path = _parquet(tmp_path / "aux.parquet", {"path": IMAGES, "c": [2.0, nan, 0.0, None], "f": [0.0, 1.5, nan, 1.0]})
    given = read_table_columns(
        path, "path", [TableTask(name="c", columns=["c"], kind="categorical", classes=3)], IMAGES
    )
    assert _same(given.values, [[2], [nan], [0], [nan]]) and given.groups[0].classes == 3
    inferred = read_table_columns(path, "path", [TableTask(name="c", columns=["c"], kind="categorical")], IMAGES)
    assert _same(inferred.values, [[1], [nan], [0], [nan]]) and inferred.groups[0].classes == 2
    _user_error(
        path, [TableTask(name="f", columns=["f"], kind="categorical")], r"column 'f'.*integers or strings, found 1\.5"
    )


def _spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[list[str] | None]:
    """Record the columns each Parquet or CSV read of a table asks for (None: every column)."""
    calls: list[list[str] | None] = []
    real_parquet, real_csv = pq.read_table, pacsv.read_csv

    def read_parquet(source: object, *args: object, columns: list[str] | None = None, **kwargs: object) -> pa.Table:
        calls.append(columns)
        return real_parquet(source, *args, columns=columns, **kwargs)

    def read_csv(
        source: object, *args: object, convert_options: pacsv.ConvertOptions | None = None, **kwargs: object
    ) -> pa.Table:
        wanted = convert_options.include_columns if convert_options is not None else []
        calls.append(list(wanted) or None)
        return real_csv(source, *args, convert_options=convert_options, **kwargs)

    monkeypatch.setattr(pq, "read_table", read_parquet)
    monkeypatch.setattr(pacsv, "read_csv", read_csv)
    return calls


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_only_the_key_and_declared_columns_are_read_once_per_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """The check before a run and the run's read share one read of the key and declared columns; a file written
    anew is read anew; an unknown column is still one line naming it."""
    write = _parquet if suffix == ".parquet" else _csv
    wide = {"path": IMAGES, "t": [0, 1, 1, 0], "unused": ["x"] * 4, "other": [1.5] * 4}
    path = write(tmp_path / f"wide{suffix}", wide)
    calls = _spy_reads(monkeypatch)
    tasks = [TableTask(name="t", columns=["t"], kind="binary")]
    check_table(path, "path", tasks, IMAGES)
    first = read_table_columns(path, "path", tasks, IMAGES)
    assert calls == [["path", "t"]] and first.values[:, 0].tolist() == [0, 1, 1, 0]
    write(path, {**wide, "t": [1, 1, 0, 0], "more": [0] * 4})
    again = read_table_columns(path, "path", tasks, IMAGES)
    assert calls == [["path", "t"]] * 2 and again.values[:, 0].tolist() == [1, 1, 0, 0]
    _user_error(
        path, [TableTask(name="u", columns=["u"], kind="binary")], rf"wide\{suffix}: no column 'u' \(task 'u'\)"
    )


# ---- image keys ----------------------------------------------------------------------------------


def _assert_keys_follow_labels(classes: list[str], keys: list[str], y: torch.Tensor, class_level: int) -> None:
    assert len(keys) == len(y) and len(set(keys)) == len(keys)
    assert [k.split("/")[class_level] for k in keys] == [classes[int(c)] for c in y]


def test_imagefolder_keys_align_with_labels(tmp_path: Path) -> None:
    split = {**_tree({"cow": 3, "ant": 4, "bee": 2}, "train"), **_tree({"ant": 1, "cow": 2}, "test")}
    data = load_imagefolder(_write_zip(tmp_path / "split.zip", split, wrapper="wrap/"), 8, tmp_path / "cache")
    assert data.train_keys[0] == "train/ant/000.png" and data.test_keys == [
        "test/ant/000.png",
        "test/cow/000.png",
        "test/cow/001.png",
    ]
    _assert_keys_follow_labels(data.classes, data.train_keys, data.train.y, 1)
    _assert_keys_follow_labels(data.classes, data.test_keys, data.test.y, 1)
    single = load_imagefolder(
        _write_folder(tmp_path / "all", _tree({"ant": 5, "bee": 10, "cow": 5}, None)), 8, tmp_path / "cache"
    )
    assert len(single.test_keys) == 4 and sorted(single.train_keys + single.test_keys) == sorted(
        _tree({"ant": 5, "bee": 10, "cow": 5}, None)
    )
    _assert_keys_follow_labels(single.classes, single.train_keys, single.train.y, 0)
    _assert_keys_follow_labels(single.classes, single.test_keys, single.test.y, 0)
    cached = load_imagefolder(tmp_path / "all", 8, tmp_path / "cache")
    assert cached.train_keys == single.train_keys and cached.test_keys == single.test_keys


def test_keys_are_listed_without_decoding_as_the_loaders_give_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before a run lists the image keys without decoding an image, and they are the keys the loaders
    give: a wrapped split zip, a single tree (its held-out test images left out), a pool, the CIFAR batches."""
    split = {**_tree({"cow": 3, "ant": 4, "bee": 2}, "train"), **_tree({"ant": 1}, "test")}
    zipped = _write_zip(tmp_path / "split.zip", split, wrapper="wrap/")
    single = _write_folder(tmp_path / "all", _tree({"ant": 5, "bee": 10, "cow": 5}, None))
    pool = _write_zip(tmp_path / "pool.zip", split, wrapper="pool/")
    _write_cifar_batches(tmp_path / "cifar" / "cifar-10-batches-py")

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("listing keys decoded images")

    with monkeypatch.context() as m:
        for module, name in [(imagefolder, "decode_names"), (unlabeled, "decode_names"), (cifar, "_read_batches")]:
            m.setattr(module, name, no_decode)
        listed = [imagefolder_train_keys(zipped), imagefolder_train_keys(single), unlabeled_keys(pool)]
        batch_keys = cifar10_train_keys(tmp_path / "cifar")
        assert cifar10_train_keys(tmp_path / "nothing-yet") is None
    cache = tmp_path / "cache"
    decoded = [load_imagefolder(zipped, 8, cache).train_keys, load_imagefolder(single, 8, cache).train_keys]
    assert listed == [*decoded, load_unlabeled(pool, 8, cache).keys] and len(listed[1]) == 16
    assert batch_keys == load_cifar10(tmp_path / "cifar").train_keys and len(batch_keys) == 100


def test_cifar_batches_are_keyed_by_position(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_batches(folder: Path, names: list[str]) -> TensorData:
        n = 7 if names == ["test_batch"] else 12
        return TensorData(torch.zeros(n, 3, 32, 32, dtype=torch.uint8), torch.zeros(n, dtype=torch.long))

    monkeypatch.setattr("auxray.data.cifar._read_batches", fake_batches)
    data = load_cifar_batches(tmp_path)
    assert data.train_keys[11] == "train/00011" and data.test_keys == [f"test/{i:05d}" for i in range(7)]


def test_cache_without_keys_is_rebuilt(tmp_path: Path) -> None:
    source = _write_zip(tmp_path / "tiny.zip", _tree({"ant": 2, "bee": 2}, "train"))
    target = cache_path(source, 8, tmp_path / "cache")
    stale = (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, dtype=torch.long))
    save_atomic({"classes": ["old"], "train": stale, "test": stale}, target)
    data = load_imagefolder(source, 8, tmp_path / "cache")
    assert data.classes == ["ant", "bee"] and len(data.train_keys) + len(data.test_keys) == 4
    assert "train_keys" in torch.load(target, weights_only=True)


# ---- unlabelled pools ----------------------------------------------------------------------------


def test_unlabeled_flat_class_and_split_pools(tmp_path: Path) -> None:
    flat = {"img001.png": _png(COLOURS["ant"]), "img002.png": _png(COLOURS["bee"]), "notes.txt": b"x"}
    pool = load_unlabeled(_write_folder(tmp_path / "flat", flat), 4, tmp_path / "cache")
    assert pool.keys == ["img001.png", "img002.png"] and pool.x.shape == (2, 3, 4, 4) and pool.x.dtype == torch.uint8
    assert pool.x[1].float().mean(dim=(1, 2)).sub(torch.tensor(COLOURS["bee"])).abs().max() < 2
    shaped = load_unlabeled(
        _write_folder(tmp_path / "classes", _tree({"cow": 2, "ant": 1}, None)), 8, tmp_path / "cache"
    )
    assert shaped.keys == ["ant/000.png", "cow/000.png", "cow/001.png"]
    split = {**_tree({"cow": 1}, "train"), **_tree({"ant": 1}, "test")}
    zipped = load_unlabeled(_write_zip(tmp_path / "pool.zip", split, wrapper="pool/"), 8, tmp_path / "cache")
    assert zipped.keys == ["test/ant/000.png", "train/cow/000.png"] and len(zipped) == 2
    assert zipped.x[1].float().mean(dim=(1, 2)).sub(torch.tensor(COLOURS["cow"])).abs().max() < 2


def test_unlabeled_is_cached_apart_from_the_labelled_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _write_zip(tmp_path / "tiny.zip", _tree({"ant": 2, "bee": 2}, "train"))
    labelled = load_imagefolder(source, 8, tmp_path / "cache")
    first = load_unlabeled(source, 8, tmp_path / "cache")
    assert cache_path(source, 8, tmp_path / "cache", kind="unlabeled").is_file()

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again despite a cache")

    monkeypatch.setattr(unlabeled, "decode_unlabeled", no_decode)
    again = load_unlabeled(source, 8, tmp_path / "cache")
    assert again.keys == first.keys and sorted(first.keys) == sorted(labelled.train_keys + labelled.test_keys)
    assert torch.equal(again.x, first.x)


def test_unlabeled_missing_or_empty_pool_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unlabelled pool not found"):
        load_unlabeled(tmp_path / "missing", 8, tmp_path / "cache")
    _write_folder(tmp_path / "empty", {"readme.txt": b"no images"})
    with pytest.raises(UserError, match="no images") as err:
        load_unlabeled(tmp_path / "empty", 8, tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_a_regression_column_trains_with_a_bounded_gradient() -> None:
    """A regression column's loss is Huber on the standardised values: squared error near the target, and beyond one
    standard deviation a gradient of at most 1 per value, as a classification head's is (a far-off prediction at
    the primary's learning rate does not blow the head up); a missing value adds nothing."""
    loss = ColumnLoss(ColumnGroup("size", "regression", 0, 2, None))
    pred = torch.tensor([[0.5, 1000.0], [-3.0, 0.2], [2.0, 7.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0], [0.0, float("nan")], [2.0, 7.0]])
    y = torch.cat([torch.zeros(3, 1), target], dim=1)  # the main label first, then the table's columns
    per = loss.loss({"x": {"size": pred}}, {"y": y})
    torch.testing.assert_close(per.detach(), torch.tensor([(0.125 + 999.5) / 2, 2.5, 0.0]))
    per.sum().backward()
    assert pred.grad is not None
    torch.testing.assert_close(pred.grad, torch.tensor([[0.25, 0.5], [-1.0, 0.0], [0.0, 0.0]]))
