"""Amazon Reviews 2023 JSONL (``<Category>.jsonl[.gz]`` + ``meta_<Category>.jsonl[.gz]``) → ``RecDataset``.

Files are streamed line by line (real categories are gigabytes). Every error names the file and its 1-based line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from genrecedit.data._io import open_text
from genrecedit.data.atomic import TEXT_SEPARATOR, sort_interactions
from genrecedit.data.dataset import RecDataset
from genrecedit.errors import DataFormatError, DuplicateItemError, EmptyInputError, UnknownItemError

DESCRIPTION_CHARS = 300  # the description is long marketing text; its start is enough for a sentence encoder
REVIEW_KEYS = ("user_id", "parent_asin", "timestamp")
META_KEYS = ("parent_asin", "title")  # features, categories, store, description: optional, null allowed


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line, object) for every non-blank line; malformed JSON or a non-object is a DataFormatError."""
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFormatError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=lineno) from e
                if not isinstance(obj, dict):
                    raise DataFormatError(path, f"expected a JSON object, found {type(obj).__name__}", line=lineno)
                yield lineno, obj
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not valid UTF-8 ({e.reason})") from e
    except (OSError, EOFError) as e:
        raise DataFormatError(path, f"cannot read file: {e}") from e


def _require(path: Path, lineno: int, obj: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in obj or obj[key] is None:
            raise DataFormatError(path, f"missing key {key!r}", line=lineno)


def _string(path: Path, lineno: int, obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataFormatError(path, f"key {key!r} must be a string, found {type(value).__name__}", line=lineno)
    return value.strip()


def _strings(path: Path, lineno: int, obj: dict[str, Any], key: str) -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataFormatError(path, f"key {key!r} must be a list of strings", line=lineno)
    return [v.strip() for v in value if v.strip()]


def item_text(path: Path, lineno: int, meta: dict[str, Any]) -> str:
    """``title | store | categories (", ") | features ("; ") | description`` with empty parts skipped.

    The description (its strings joined by spaces) is cut to ``DESCRIPTION_CHARS`` characters.
    """
    description = " ".join(_strings(path, lineno, meta, "description"))[:DESCRIPTION_CHARS].rstrip()
    parts = [
        _string(path, lineno, meta, "title"),
        _string(path, lineno, meta, "store"),
        ", ".join(_strings(path, lineno, meta, "categories")),
        "; ".join(_strings(path, lineno, meta, "features")),
        description,
    ]
    return TEXT_SEPARATOR.join(p for p in parts if p)


def _read_meta(path: Path) -> pd.DataFrame:
    texts: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in _json_lines(path):
        _require(path, lineno, obj, META_KEYS)
        item = _string(path, lineno, obj, "parent_asin")
        if not item:
            raise DataFormatError(path, "empty 'parent_asin'", line=lineno)
        if item in texts:
            raise DuplicateItemError(f"{path}:{lineno}: item {item!r} occurs twice (first on line {first_line[item]})")
        text = item_text(path, lineno, obj)
        if not text:
            raise EmptyInputError(f"{path}:{lineno}: item {item!r} has empty text (title, store, categories, ...)")
        texts[item], first_line[item] = text, lineno
    return pd.DataFrame({"text": list(texts.values())}, index=pd.Index(list(texts.keys()), name="item_id"))


def _read_reviews(path: Path, known: set[str], meta_path: Path) -> pd.DataFrame:
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    for lineno, obj in _json_lines(path):
        _require(path, lineno, obj, REVIEW_KEYS)
        user, item = _string(path, lineno, obj, "user_id"), _string(path, lineno, obj, "parent_asin")
        if not user or not item:
            raise DataFormatError(path, "empty 'user_id' or 'parent_asin'", line=lineno)
        ms = obj["timestamp"]
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms != ms or abs(ms) == float("inf"):
            raise DataFormatError(path, f"timestamp {ms!r} is not a finite number of milliseconds", line=lineno)
        if item not in known:
            raise UnknownItemError(f"{path}:{lineno}: item {item!r} is not in the meta file {meta_path}")
        users.append(user)
        items.append(item)
        times.append(ms / 1000.0)
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": np.asarray(times, dtype=np.float64)})


def read_amazon2023(reviews_path: Path, meta_path: Path, name: str | None = None) -> RecDataset:
    """Read Amazon Reviews 2023 review + meta JSONL files (plain or ``.gz``) into a validated ``RecDataset``.

    Reviews need ``user_id``, ``parent_asin`` and ``timestamp`` (Unix milliseconds; stored as float seconds).
    Meta lines need ``parent_asin`` and ``title``; the item text is built by ``item_text``. Items in the meta file that
    nobody reviewed stay in the catalog. ``name`` defaults to the reviews file's name without ``.jsonl[.gz]``.

    Raises DataFormatError (bad JSON, missing key, wrong type), DuplicateItemError, EmptyInputError and
    UnknownItemError (a review of an item missing from the meta file), each naming file and line.
    """
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    items = _read_meta(meta_path)
    inter = _read_reviews(reviews_path, set(items.index), meta_path)
    if name is None:
        name = reviews_path.name.split(".jsonl")[0]
    ds = RecDataset(name=name, interactions=sort_interactions(inter), items=items)
    ds.validate()
    return ds
