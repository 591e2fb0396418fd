"""Auxiliary labels from a Parquet or CSV table keyed by image path: checked early, read into one float tensor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    """Per-image values float32 [N, k] (NaN where missing), each task's column slice, and the table rows matched."""

    values: Tensor
    groups: list[ColumnGroup]
    matched: int


def _fail(path: Path, message: str) -> UserError:
    """A one-line UserError about the table at `path`."""
    return UserError(f"aux table {path}: {' '.join(message.split())}")


def _read(path: Path, key: str, tasks: Sequence[TableTask]) -> pa.Table:
    """The key column and every declared column of the table, or a UserError naming what is missing."""
    if not path.is_file():
        raise UserError(f"aux table not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in PARQUET_SUFFIXES + CSV_SUFFIXES:
        raise _fail(path, f"unknown suffix {suffix or '(none)'!r}; use .parquet, .pq or .csv")
    try:
        if suffix in PARQUET_SUFFIXES:
            table = pq.read_table(path)
        else:
            options = pacsv.ConvertOptions(column_types={key: pa.string()}, strings_can_be_null=True)
            table = pacsv.read_csv(path, convert_options=options)
    except (pa.ArrowException, OSError) as exc:
        raise _fail(path, f"cannot read it ({type(exc).__name__}: {exc})") from None
    names = table.column_names
    shown = ", ".join(names[:SHOWN_COLUMNS]) + (", ..." if len(names) > SHOWN_COLUMNS else "")
    if key not in names:
        raise _fail(path, f"no key column {key!r} (set data.aux_key); columns: {shown}")
    for task in tasks:
        for column in task.columns:
            if column not in names:
                raise _fail(path, f"no column {column!r} (task {task.name!r}); columns: {shown}")
    wanted = list(dict.fromkeys([key] + [c for t in tasks for c in t.columns]))
    return table.select(wanted)


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


def _check_column(path: Path, name: str, column: pa.ChunkedArray, task: TableTask) -> None:
    """A UserError unless the column's type (and, for binary tasks, its values) fits the task's kind."""
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
    elif task.kind == "categorical" and not (pa.types.is_integer(kind) or _is_string(kind)):
        raise _fail(path, f"{where} must hold integers or strings, not {kind}")
    elif task.kind == "regression" and not numeric:
        raise _fail(path, f"{where} must hold numbers, not {kind}")


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


def check_table(path: str | Path, key: str, tasks: Sequence[TableTask]) -> None:
    """Check before training that the table exists and its key and declared columns are there with fitting types."""
    path = Path(path).expanduser()
    table = _read(path, key, tasks)
    _table_keys(path, key, table)
    for task in tasks:
        for name in task.columns:
            _check_column(path, name, _plain(table.column(name)), task)


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
            column = _plain(table.column(name))
            _check_column(path, name, column, task)
            if task.kind == "categorical":
                by_row, classes = _categories(path, name, column, task)
            else:
                by_row = _floats(column)
            per_image = np.append(by_row, np.nan)[rows]
            columns.append(_standardise(path, name, per_image) if task.kind == "regression" else per_image)
        groups.append(ColumnGroup(task.name, task.kind, start, len(columns), classes))
    values = np.stack(columns, axis=1) if columns else np.empty((len(rows), 0))
    return TableColumns(torch.from_numpy(values.astype(np.float32)), groups, int(len(np.unique(rows[rows >= 0]))))
