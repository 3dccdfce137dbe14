"""On-disk embedding cache, keyed by (encoder name, sha256 of the text).

Layout (format 1; keep it stable, other runs reuse it)::

    <cache_dir>/<encoder name, unsafe characters replaced by "_">/
        shard-<first 16 hex of sha256 over the shard's keys>.safetensors
            "sha256":     [m, 32] uint8   sha256 digest of each text's UTF-8 bytes
            "embeddings": [m, d]  float32
            metadata:     {"format": "1", "encoder": <exact encoder name>, "dim": "<d>"}

A shard is never modified after it is written: each ``put`` adds one shard (written to a hidden temp file, then
``os.replace``d into place), so concurrent writers cannot corrupt the cache and a reader sees either a whole shard or
none. ``compact`` merges all shards into one. A text's vector may sit in several shards; any copy is valid.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from genrecedit.errors import ArtifactMismatchError, EmptyInputError, GenRecEditError
from genrecedit.text.encoder import TextEncoder

logger = logging.getLogger(__name__)

CACHE_FORMAT = "1"
DIGEST_BYTES = hashlib.sha256().digest_size
SHARD_GLOB = "shard-*.safetensors"
_SHARD_NAME_HEX = 16
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def text_key(text: str) -> bytes:
    """The cache key of a text: sha256 of its UTF-8 bytes (32 bytes)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """All cached embeddings of one encoder, loaded into memory on construction.

    ``get`` answers from memory; ``put`` writes a new shard and updates memory.
    """

    def __init__(self, cache_dir: Path, encoder_name: str) -> None:
        self.encoder_name = encoder_name
        self.directory = Path(cache_dir) / _UNSAFE.sub("_", encoder_name)
        self.dim: int | None = None
        self._rows: dict[bytes, int] = {}
        self._blocks: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None  # concatenation of _blocks, rebuilt lazily
        for path in sorted(self.directory.glob(SHARD_GLOB)):
            self._add(*self._read_shard(path))

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: bytes) -> bool:
        return key in self._rows

    def get(self, keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """``[n] keys -> (found [n] bool, embeddings [n, d] float32)``; rows of missing keys are zero."""
        found = np.array([k in self._rows for k in keys], dtype=bool)
        if self.dim is None:
            return found, np.zeros((len(keys), 0), dtype=np.float32)
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        if found.any():
            rows = np.array([self._rows[k] for k, hit in zip(keys, found, strict=True) if hit], dtype=np.int64)
            out[found] = self._all()[rows]
        return found, out

    def put(self, keys: list[bytes], embeddings: np.ndarray) -> None:
        """Store ``[m] keys`` with ``[m, d]`` float32 embeddings as one new shard (atomic)."""
        if len(keys) == 0:
            return
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(keys):
            raise GenRecEditError(f"put: {len(keys)} keys but embeddings of shape {embeddings.shape}")
        if self.dim is not None and embeddings.shape[1] != self.dim:
            raise ArtifactMismatchError(
                f"{self.directory}: cached embeddings of {self.encoder_name!r} are {self.dim}-d, new ones are "
                f"{embeddings.shape[1]}-d; delete the directory if the encoder changed"
            )
        digests = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), DIGEST_BYTES)
        self._write_shard(digests, embeddings)
        self._add(digests, embeddings)

    def compact(self) -> None:
        """Merge every shard into one (deduplicated) shard, then delete the old shards."""
        old = sorted(self.directory.glob(SHARD_GLOB))
        if len(old) <= 1:
            return
        keys = list(self._rows)
        digests = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), DIGEST_BYTES)
        new = self._write_shard(digests, self.get(keys)[1])
        for path in old:
            if path != new:
                path.unlink(missing_ok=True)

    def _all(self) -> np.ndarray:
        if self._matrix is None or self._matrix.shape[0] != sum(b.shape[0] for b in self._blocks):
            self._matrix = np.concatenate(self._blocks, axis=0)
        return self._matrix

    def _add(self, digests: np.ndarray, embeddings: np.ndarray) -> None:
        """Append a shard's ``[m, 32]`` digests and ``[m, d]`` embeddings to the in-memory index."""
        if self.dim is None:
            self.dim = int(embeddings.shape[1])
        start = sum(b.shape[0] for b in self._blocks)
        self._blocks.append(embeddings)
        for i, digest in enumerate(digests):
            self._rows.setdefault(digest.tobytes(), start + i)

    def _read_shard(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """``shard file -> (digests [m, 32] uint8, embeddings [m, d] float32)``, checked against this encoder."""
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            digests, embeddings = f.get_tensor("sha256"), f.get_tensor("embeddings")
        if meta.get("format") != CACHE_FORMAT or meta.get("encoder") != self.encoder_name:
            raise ArtifactMismatchError(
                f"{path}: shard of encoder {meta.get('encoder')!r} (format {meta.get('format')!r}), "
                f"expected {self.encoder_name!r} (format {CACHE_FORMAT})"
            )
        if self.dim is not None and embeddings.shape[1] != self.dim:
            raise ArtifactMismatchError(f"{path}: {embeddings.shape[1]}-d embeddings among {self.dim}-d shards")
        return digests, embeddings

    def _write_shard(self, digests: np.ndarray, embeddings: np.ndarray) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(digests.tobytes()).hexdigest()[:_SHARD_NAME_HEX]
        final = self.directory / f"shard-{name}.safetensors"
        tmp = self.directory / f".tmp-{uuid.uuid4().hex}.safetensors"
        meta = {"format": CACHE_FORMAT, "encoder": self.encoder_name, "dim": str(embeddings.shape[1])}
        save_file({"sha256": digests, "embeddings": embeddings}, str(tmp), metadata=meta)
        os.replace(tmp, final)
        return final


def embed_items(encoder: TextEncoder, texts: list[str], cache_dir: Path | None) -> np.ndarray:
    """``[n] texts -> [n, encoder.dim]`` float32, encoding only the texts not yet cached.

    Raises ``EmptyInputError`` for an empty (or whitespace-only) text, naming its position, and
    ``GenRecEditError`` if the encoder returns a NaN/inf embedding (nothing is cached then).
    ``cache_dir=None`` disables the cache.
    """
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise EmptyInputError(f"text at position {i} is empty ({text!r}); every item needs a non-empty text")
    keys = [text_key(t) for t in texts]
    if cache_dir is None:
        return _encode_checked(encoder, list(texts), list(range(len(texts))))
    cache = EmbeddingCache(cache_dir, encoder.name)
    found, _ = cache.get(keys)
    missing: dict[bytes, int] = {}  # key -> first position, in order of first appearance
    for pos in np.flatnonzero(~found).tolist():
        missing.setdefault(keys[pos], pos)
    logger.info("embedding cache %s: %d of %d texts cached, %d to encode", cache.directory,
                int(found.sum()), len(texts), len(missing))
    if missing:
        positions = list(missing.values())
        new = _encode_checked(encoder, [texts[i] for i in positions], positions)
        cache.put(list(missing), new)
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    found, out = cache.get(keys)
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        raise GenRecEditError(f"cached embedding of text at position {bad[0]} is not finite; clear {cache.directory}")
    return out


def _encode_checked(encoder: TextEncoder, texts: list[str], positions: list[int]) -> np.ndarray:
    """Encode and check: ``[m] texts -> [m, dim]`` float32; ``positions`` name the texts in error messages."""
    out = np.asarray(encoder.encode(texts), dtype=np.float32)
    if out.shape != (len(texts), encoder.dim):
        raise GenRecEditError(
            f"encoder {encoder.name!r} returned shape {out.shape} for {len(texts)} texts, "
            f"expected ({len(texts)}, {encoder.dim})"
        )
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        raise GenRecEditError(
            f"encoder {encoder.name!r} returned a NaN/inf embedding for the text at position {positions[bad[0]]} "
            f"({texts[bad[0]][:80]!r}); nothing was cached"
        )
    return out
