"""embed_items + EmbeddingCache: hits skip the encoder, errors name the culprit, layout stays stable."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from genrecedit.errors import ArtifactMismatchError, EmptyInputError, GenRecEditError
from genrecedit.text import EmbeddingCache, HashingEncoder, embed_items
from genrecedit.text.cache import text_key


class CountingEncoder:
    """Wraps HashingEncoder and records every text it is asked to encode."""

    def __init__(self, name: str = "counting-hashing", dim: int = 8, nan_on: str | None = None) -> None:
        self.name = name
        self._inner = HashingEncoder(dim=dim)
        self.calls: list[list[str]] = []
        self.nan_on = nan_on

    @property
    def dim(self) -> int:
        return self._inner.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = self._inner.encode(texts)
        if self.nan_on in texts:
            out[texts.index(self.nan_on), 0] = np.nan
        return out

    @property
    def encoded(self) -> int:
        return sum(len(c) for c in self.calls)


def test_hits_skip_encoding(tmp_path: Path) -> None:
    enc = CountingEncoder()
    first = embed_items(enc, ["a b", "c d", "a b", "e f"], tmp_path)
    assert enc.calls == [["a b", "c d", "e f"]]  # duplicates within a call are encoded once
    np.testing.assert_array_equal(first, HashingEncoder(dim=8).encode(["a b", "c d", "a b", "e f"]))

    fresh = CountingEncoder()  # a new process: only the disk is shared
    again = embed_items(fresh, ["e f", "a b"], tmp_path)
    assert fresh.calls == []
    np.testing.assert_array_equal(again, first[[3, 0]])

    mixed = embed_items(fresh, ["a b", "g h", "c d"], tmp_path)
    assert fresh.calls == [["g h"]]
    np.testing.assert_array_equal(mixed[[0, 2]], first[[0, 1]])


def test_layout_and_compaction(tmp_path: Path) -> None:
    enc = CountingEncoder(name="weird/name v1")
    embed_items(enc, ["x"], tmp_path)
    embed_items(enc, ["y", "x"], tmp_path)
    directory = tmp_path / "weird_name_v1"
    shards = sorted(directory.glob("shard-*.safetensors"))
    assert len(shards) == 2 and not list(directory.glob(".tmp-*"))
    with safe_open(str(shards[0]), framework="numpy") as f:
        assert f.metadata() == {"format": "1", "encoder": "weird/name v1", "dim": "8"}
        assert f.get_tensor("sha256").shape[1] == 32 and f.get_tensor("embeddings").dtype == np.float32
    cache = EmbeddingCache(tmp_path, enc.name)
    assert len(cache) == 2 and text_key("y") in cache
    cache.compact()
    assert len(list(directory.glob("shard-*.safetensors"))) == 1
    found, vectors = EmbeddingCache(tmp_path, enc.name).get([text_key("x"), text_key("z")])
    assert found.tolist() == [True, False]
    np.testing.assert_array_equal(vectors[0], HashingEncoder(dim=8).encode(["x"])[0])


def test_encoders_do_not_share_entries(tmp_path: Path) -> None:
    embed_items(CountingEncoder(name="enc-a"), ["x"], tmp_path)
    other = CountingEncoder(name="enc-b")
    embed_items(other, ["x"], tmp_path)
    assert other.encoded == 1


def test_empty_text_names_position(tmp_path: Path) -> None:
    enc = CountingEncoder()
    with pytest.raises(EmptyInputError, match="position 2"):
        embed_items(enc, ["a", "b", "  ", "c"], tmp_path)
    assert enc.calls == []


def test_nan_embedding_is_an_error_and_not_cached(tmp_path: Path) -> None:
    with pytest.raises(GenRecEditError, match="position 1"):
        embed_items(CountingEncoder(nan_on="bad"), ["ok", "bad"], tmp_path)
    assert len(EmbeddingCache(tmp_path, "counting-hashing")) == 0
    with pytest.raises(GenRecEditError, match="NaN"):
        embed_items(CountingEncoder(nan_on="bad"), ["bad"], None)


def test_dimension_change_is_detected(tmp_path: Path) -> None:
    embed_items(CountingEncoder(dim=8), ["a"], tmp_path)
    with pytest.raises(ArtifactMismatchError, match="8-d"):
        embed_items(CountingEncoder(dim=16), ["b"], tmp_path)


def test_no_cache_and_empty_list(tmp_path: Path) -> None:
    enc = CountingEncoder()
    assert embed_items(enc, [], tmp_path).shape == (0, 8)
    out = embed_items(enc, ["a", "a"], None)
    assert out.shape == (2, 8) and not list(tmp_path.iterdir())
