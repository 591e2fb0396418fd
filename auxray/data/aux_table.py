"""Auxiliary labels from a Parquet or CSV table keyed by image path: checked early, read into one float tensor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from torch import Tensor

from auxray.config import TableTask
from auxray.errors import UserError

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
SHOWN_COLUMNS = 8
Kind = Literal["binary", "categorical", "regression"]


@dataclass(frozen=True)
class ColumnGroup:
    """One table task's columns ``values[:, start:stop]``; classes is the class count of a categorical task."""

    name: str
    kind: Kind
    start: int
    stop: int
    classes: int | None = None


@dataclass
class TableColumns:
    """Per-image values float32 [N, k] (NaN where missing), each task's column slice, the table rows matched and the
    images that have a row (N images in all)."""

    values: Tensor
    groups: list[ColumnGroup]
    matched: int
    images_matched: int

    def report(self, path: str | Path) -> str:
        """One line saying how many images the table at `path` labels, so a table that matches few is noticed."""
        total = len(self.values)
        share = 100 * self.images_matched / total if total else 0.0
        return f"aux table {path}: {self.images_matched} of {total} images matched ({share:.1f}%)"


def _fail(path: Path, message: str) -> UserError:
    """A one-line UserError about the table at `path`."""
    return UserError(f"aux table {path}: {' '.join(message.split())}")


def _column_names(path: Path, suffix: str) -> list[str]:
    """The table's column names, from the Parquet schema or the CSV header, without reading its values."""
    if suffix in PARQUET_SUFFIXES:
        return list(pq.read_schema(path).names)
    reader = pacsv.open_csv(path)
    try:
        return list(reader.schema.names)
    finally:
        reader.close()


@lru_cache(maxsize=1)
def _read_file(path: Path, stamp: tuple[int, int, int], key: str, wanted: tuple[tuple[str, str], ...]) -> pa.Table:
    """The key column and the (task, column) pairs `wanted`, read once per version (`stamp`) of the file: the check
    before a run starts and the run's own read in the same process share it."""
    suffix = path.suffix.lower()
    try:
        names = _column_names(path, suffix)
        shown = ", ".join(names[:SHOWN_COLUMNS]) + (", ..." if len(names) > SHOWN_COLUMNS else "")
        if key not in names:
            raise _fail(path, f"no key column {key!r} (set data.aux_key); columns: {shown}")
        for task, column in wanted:
            if column not in names:
                raise _fail(path, f"no column {column!r} (task {task!r}); columns: {shown}")
        columns = list(dict.fromkeys([key] + [c for _, c in wanted]))
        if suffix in PARQUET_SUFFIXES:
            return pq.read_table(path, columns=columns)
        options = pacsv.ConvertOptions(
            column_types={key: pa.string()}, strings_can_be_null=True, include_columns=columns
        )
        return pacsv.read_csv(path, convert_options=options)
    except (pa.ArrowException, OSError) as exc:
        raise _fail(path, f"cannot read it ({type(exc).__name__}: {exc})") from None


def _read(path: Path, key: str, tasks: Sequence[TableTask]) -> pa.Table:
    """The key column and every declared column of the table, or a UserError naming what is missing."""
    if not path.is_file():
        raise UserError(f"aux table not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in PARQUET_SUFFIXES + CSV_SUFFIXES:
        raise _fail(path, f"unknown suffix {suffix or '(none)'!r}; use .parquet, .pq or .csv")
    st = path.stat()
    wanted = tuple((t.name, c) for t in tasks for c in t.columns)
    return _read_file(path, (st.st_ino, st.st_size, st.st_mtime_ns), key, wanted)


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column with dictionary encoding (e.g. pandas categoricals) undone."""
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def _is_string(kind: pa.DataType) -> bool:
    """Whether an Arrow type holds text."""
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """A numeric or boolean column as float64, null as NaN."""
    return pc.fill_null(column.cast(pa.float64()), np.nan).to_numpy()


def _checked(path: Path, name: str, column: pa.ChunkedArray, task: TableTask) -> pa.ChunkedArray:
    """The column, once its type (and, for binary tasks, its values) fits the task's kind, else a UserError; a
    categorical column of floats (pandas' integers with gaps) comes back as integers, NaN as null."""
    kind = column.type
    where = f"column {name!r} (task {task.name!r}, {task.kind})"
    if pa.types.is_null(kind):
        raise _fail(path, f"{where} has no values")
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
    if task.kind == "binary":
        if not (numeric or pa.types.is_boolean(kind)):
            raise _fail(path, f"{where} must hold booleans or 0/1 numbers, not {kind}")
        values = _floats(column)
        bad = values[~np.isnan(values) & (values != 0) & (values != 1)]
        if len(bad):
            raise _fail(path, f"{where} must hold only 0, 1 or empty cells, found {bad[0]:g}")
    elif task.kind == "categorical":
        if pa.types.is_floating(kind):
            return _integral(path, where, column)
        if not (pa.types.is_integer(kind) or _is_string(kind)):
            raise _fail(path, f"{where} must hold integers or strings, not {kind}")
    elif task.kind == "regression" and not numeric:
        raise _fail(path, f"{where} must hold numbers, not {kind}")
    return column


def _integral(path: Path, where: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A float column of class ids as int64 (NaN and null as null), or a UserError naming a value with a fraction."""
    values = _floats(column)
    present = ~np.isnan(values)
    bad = values[present & ((values != np.round(values)) | ~(np.abs(values) < 2**53))]
    if len(bad):
        raise _fail(path, f"{where} must hold integers or strings, found {bad[0]:g}")
    ids = np.where(present, values, 0).astype(np.int64)
    return pa.chunked_array([pa.array(ids, mask=~present)])


def _table_keys(path: Path, key: str, table: pa.Table) -> pa.Array:
    """The key column normalised (``\\`` to ``/``, no leading ``./``), checked to be non-empty strings, unique."""
    column = _plain(table.column(key))
    if not _is_string(column.type):
        raise _fail(path, f"key column {key!r} must hold image paths (strings), not {column.type}")
    if column.null_count:
        raise _fail(path, f"key column {key!r} has {column.null_count} empty cells")
    keys = normalise_keys(column.combine_chunks())
    counts = pc.value_counts(keys)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        first = repeated[0]["values"].as_py()
        raise _fail(path, f"key column {key!r} has {len(repeated)} repeated keys, e.g. {first!r}")
    return keys


def normalise_keys(keys: pa.Array) -> pa.Array:
    """Image keys as posix paths without a leading ``./``, so a table written on Windows or with ``./`` matches."""
    slashed = pc.replace_substring(keys.cast(pa.string()), "\\", "/")
    return pc.replace_substring_regex(slashed, r"^(\./)+", "")


def check_table(
    path: str | Path, key: str, tasks: Sequence[TableTask], image_keys: Sequence[str] | None = None
) -> TableColumns | None:
    """Check before training what can be wrong with the table, each failure one UserError line: that it exists with
    its key and declared columns of fitting types; given the run's `image_keys` (None while the images are still to
    be downloaded), also that its keys match images, its classes are in range and no regression column is constant
    over the matched rows. Returns the columns read_table_columns gives when `image_keys` are given."""
    if image_keys is not None:
        return read_table_columns(path, key, tasks, image_keys)
    path = Path(path).expanduser()
    table = _read(path, key, tasks)
    _table_keys(path, key, table)
    for task in tasks:
        for name in task.columns:
            _checked(path, name, _plain(table.column(name)), task)
    return None


def _categories(path: Path, name: str, column: pa.ChunkedArray, task: TableTask) -> tuple[np.ndarray, int]:
    """Class indices (float64, NaN where empty) of a categorical column over the whole table, and the class count."""
    distinct = pc.unique(column.drop_null()).to_pylist()
    where = f"column {name!r} (task {task.name!r})"
    if task.classes is None:
        if len(distinct) < 2:
            raise _fail(path, f"{where} has {len(distinct)} distinct values; a categorical task needs 2 or more")
        ordered = pa.array(sorted(distinct), type=column.type)
        return _floats(pc.index_in(column, value_set=ordered)), len(distinct)
    if pa.types.is_integer(column.type):
        outside = [v for v in distinct if not 0 <= v < task.classes]
        if outside:
            raise _fail(path, f"{where} holds class {min(outside)}, outside 0..{task.classes - 1}")
        return _floats(column), task.classes
    if len(distinct) > task.classes:
        raise _fail(path, f"{where} has {len(distinct)} distinct values but classes is {task.classes}")
    ordered = pa.array(sorted(distinct), type=column.type)
    return _floats(pc.index_in(column, value_set=ordered)), task.classes


def _standardise(path: Path, name: str, values: np.ndarray) -> np.ndarray:
    """Values shifted and scaled to mean 0 / std 1 over their non-NaN entries (the rows that match images)."""
    present = values[~np.isnan(values)]
    std = float(present.std()) if len(present) else 0.0
    if std == 0:
        raise _fail(path, f"regression column {name!r} is constant over the {len(present)} rows matching images")
    return (values - present.mean()) / std


def _match(path: Path, key: str, table_keys: pa.Array, image_keys: Sequence[str]) -> np.ndarray:
    """For each image, its table row (-1 when it has none); a UserError when no image has a row."""
    images = normalise_keys(pa.array(list(image_keys), type=pa.string()))
    rows = pc.fill_null(pc.index_in(images, value_set=table_keys), -1).to_numpy(zero_copy_only=False)
    if not (rows >= 0).any():
        example = images[0].as_py() if len(images) else "(no images)"
        raise _fail(
            path,
            f"none of its {len(table_keys)} keys in column {key!r} matches an image key "
            f"(table key {table_keys[0].as_py()!r}, image key {example!r})",
        )
    return rows.astype(np.int64)


def read_table_columns(
    path: str | Path, key: str, tasks: Sequence[TableTask], image_keys: Sequence[str]
) -> TableColumns:
    """Each image's auxiliary values from the table, aligned with `image_keys`, so table tasks can index them by row.

    Categorical classes are inferred over the whole table (sorted values); regression columns are standardised over
    the rows that match `image_keys`, so pass every image key of a run in one call.
    """
    path = Path(path).expanduser()
    table = _read(path, key, tasks)
    rows = _match(path, key, _table_keys(path, key, table), image_keys)
    columns: list[np.ndarray] = []
    groups: list[ColumnGroup] = []
    for task in tasks:
        start, classes = len(columns), None
        for name in task.columns:
            column = _checked(path, name, _plain(table.column(name)), task)
            if task.kind == "categorical":
                by_row, classes = _categories(path, name, column, task)
            else:
                by_row = _floats(column)
            per_image = np.append(by_row, np.nan)[rows]
            columns.append(_standardise(path, name, per_image) if task.kind == "regression" else per_image)
        groups.append(ColumnGroup(task.name, task.kind, start, len(columns), classes))
    values = np.stack(columns, axis=1) if columns else np.empty((len(rows), 0))
    matched = rows[rows >= 0]
    return TableColumns(torch.from_numpy(values.astype(np.float32)), groups, len(np.unique(matched)), len(matched))
