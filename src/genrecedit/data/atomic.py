"""RecBole atomic files (``.inter`` / ``.item``, plain or gzip) → ``RecDataset``.

Format: UTF-8, tab-separated, no quoting; the first line is a typed header such as
``user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float``. Empty lines are skipped; every other
line must have exactly one field per header column. Every error names the file and its 1-based line.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from genrecedit.data._io import read_lines
from genrecedit.data.dataset import RecDataset
from genrecedit.errors import DataFormatError, DuplicateItemError, EmptyInputError, UnknownItemError

INTER_COLUMNS = ("user_id", "item_id", "timestamp")
ITEM_ID = "item_id"
TEXT_TYPES = ("token", "token_seq")  # header types whose values are text (not numbers)
TEXT_SEPARATOR = " | "  # joins an item's text fields, e.g. "Toy Story | 1995 | Animation Children's Comedy"


@dataclass(frozen=True)
class AtomicTable:
    """One parsed atomic file.

    columns / types: header names and RecBole types, in file order.
    frame: [n_rows, n_columns] str values, one row per non-empty data line.
    lines: [n_rows] int64 1-based file line of each row (for error messages).
    """

    path: Path
    columns: list[str]
    types: list[str]
    frame: pd.DataFrame
    lines: np.ndarray

    def require(self, column: str) -> pd.Series:
        """The column's values; ``DataFormatError`` naming the column when the header lacks it."""
        if column not in self.columns:
            header = ", ".join(f"{c}:{t}" for c, t in zip(self.columns, self.types))
            raise DataFormatError(self.path, f"missing required column {column!r} (header has: {header})", line=1)
        return self.frame[column]

    def fail_at(self, row: int, message: str) -> DataFormatError:
        return DataFormatError(self.path, message, line=int(self.lines[row]))


def _parse_header(path: Path, header: str) -> tuple[list[str], list[str]]:
    names, types = [], []
    for field in header.split("\t"):
        name, _, ftype = field.strip().partition(":")
        if not name:
            raise DataFormatError(path, f"header field {field!r} has no column name", line=1)
        if name in names:
            raise DataFormatError(path, f"column {name!r} occurs twice in the header", line=1)
        names.append(name)
        types.append(ftype or "token")
    return names, types


def read_atomic_table(path: Path) -> AtomicTable:
    """Parse one atomic file. Field counts are checked line by line first, then pandas parses the clean lines."""
    path = Path(path)
    lines = read_lines(path)
    if not lines or not lines[0].strip():
        raise DataFormatError(path, "empty file: no header line", line=1)
    columns, types = _parse_header(path, lines[0])
    body = lines[1:]
    tabs = np.fromiter((line.count("\t") for line in body), dtype=np.int64, count=len(body))
    blank = np.fromiter((line == "" for line in body), dtype=bool, count=len(body))
    bad = np.flatnonzero((tabs != len(columns) - 1) & ~blank)
    if bad.size:
        k = int(bad[0])
        raise DataFormatError(
            path, f"expected {len(columns)} tab-separated fields ({', '.join(columns)}), found {tabs[k] + 1}",
            line=k + 2,
        )
    keep = np.flatnonzero(~blank)
    text = "\n".join(body[k] for k in keep)
    if keep.size:
        frame = pd.read_csv(
            io.StringIO(text), sep="\t", header=None, names=columns, dtype=str, na_filter=False,
            quoting=csv.QUOTE_NONE, lineterminator="\n", skip_blank_lines=False, engine="c",
        )
    else:
        frame = pd.DataFrame({c: pd.Series([], dtype=str) for c in columns})
    if len(frame) != keep.size:  # cannot happen after the field-count check; guards a pandas quirk
        raise DataFormatError(path, f"parsed {len(frame)} rows from {keep.size} data lines")
    return AtomicTable(path, columns, types, frame, keep + 2)


def _first_true(mask: np.ndarray | pd.Series) -> int | None:
    hits = np.flatnonzero(np.asarray(mask))
    return int(hits[0]) if hits.size else None


def _read_interactions(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """[n, 3] user_id / item_id (str), timestamp (float64) in file order, and the [n] file lines."""
    table = read_atomic_table(path)
    users, items, raw_ts = (table.require(c) for c in INTER_COLUMNS)
    for name, col in (("user_id", users), ("item_id", items)):
        if (row := _first_true(col.str.strip().eq(""))) is not None:
            raise table.fail_at(row, f"empty {name}")
    ts = pd.to_numeric(raw_ts, errors="coerce").to_numpy(dtype=np.float64)
    if (row := _first_true(~np.isfinite(ts))) is not None:
        raise table.fail_at(row, f"timestamp {raw_ts.iloc[row]!r} is not a finite number")
    frame = pd.DataFrame({"user_id": users.to_numpy(), "item_id": items.to_numpy(), "timestamp": ts})
    return frame, table.lines


def _read_items(path: Path, text_fields: Sequence[str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Item table indexed by ``item_id`` with one ``text`` column: the text fields joined by ``TEXT_SEPARATOR``;
    and the fields themselves, one column each (``RecDataset.item_fields``)."""
    table = read_atomic_table(path)
    ids = table.require(ITEM_ID)
    if text_fields is None:
        fields = [c for c, t in zip(table.columns, table.types) if c != ITEM_ID and t in TEXT_TYPES]
        if not fields:
            raise DataFormatError(path, "no text column (token or token_seq) besides item_id", line=1)
    else:
        fields = list(text_fields)
        for f in fields:
            table.require(f)
    if (row := _first_true(ids.str.strip().eq(""))) is not None:
        raise table.fail_at(row, "empty item_id")
    dup = ids.duplicated(keep="first").to_numpy()
    if (row := _first_true(dup)) is not None:
        first = _first_true(ids.eq(ids.iloc[row]))
        raise DuplicateItemError(
            f"{path}:{table.lines[row]}: item {ids.iloc[row]!r} occurs twice (first on line {table.lines[first]})"
        )
    parts = [table.frame[f].str.strip().tolist() for f in fields]
    text = [TEXT_SEPARATOR.join(p for p in values if p) for values in zip(*parts)]
    if (row := _first_true(np.array([t == "" for t in text], dtype=bool))) is not None:
        raise EmptyInputError(
            f"{path}:{table.lines[row]}: item {ids.iloc[row]!r} has empty text (fields: {', '.join(fields)})"
        )
    index = pd.Index(ids.to_numpy(), name=ITEM_ID)
    return (pd.DataFrame({"text": text}, index=index),
            pd.DataFrame(dict(zip(fields, parts)), index=index.copy(), columns=list(dict.fromkeys(fields))))


def sort_interactions(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort by (user_id, timestamp); ties keep their input order (``np.lexsort`` is stable)."""
    user_codes, _ = pd.factorize(frame["user_id"], sort=True)
    order = np.lexsort((frame["timestamp"].to_numpy(), user_codes))
    return frame.iloc[order].reset_index(drop=True)


def read_atomic(
    inter_path: Path, item_path: Path, name: str | None = None, text_fields: Sequence[str] | None = None
) -> RecDataset:
    """Read a RecBole ``.inter`` + ``.item`` pair (plain or ``.gz``) into a validated ``RecDataset``.

    The inter file needs ``user_id``, ``item_id`` and ``timestamp`` (seconds; other columns are ignored). The item
    file needs ``item_id``; an item's text is its text fields (``text_fields``, or by default every ``token`` /
    ``token_seq`` column except ``item_id``, in header order), stripped, empty ones skipped, joined by
    ``" | "`` — ML-100k: ``movie_title | release_year | class``; the Amazon sets: the title alone.
    ``name`` defaults to the inter file's name without ``.inter[.gz]``.

    Raises DataFormatError (malformed line, missing column, non-numeric timestamp), DuplicateItemError,
    EmptyInputError (empty item text) and UnknownItemError (an interaction's item is not in the item file), each
    naming file and line.
    """
    inter_path, item_path = Path(inter_path), Path(item_path)
    items, fields = _read_items(item_path, text_fields)
    inter, lines = _read_interactions(inter_path)
    unknown = ~inter["item_id"].isin(items.index).to_numpy()
    if (row := _first_true(unknown)) is not None:
        raise UnknownItemError(
            f"{inter_path}:{lines[row]}: item {inter['item_id'].iloc[row]!r} is not in the item file {item_path}"
        )
    if name is None:
        name = inter_path.name.split(".inter")[0]
    ds = RecDataset(name=name, interactions=sort_interactions(inter), items=items, item_fields=fields)
    ds.validate()
    return ds
