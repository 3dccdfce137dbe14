"""Items -> semantic IDs: the one tokenizer object the rest of the product uses.

A SID is ``levels`` quantiser codes followed by a dedup token: items whose ``levels`` codes coincide (a shared
*prefix*) get dedup tokens 0, 1, 2, ... in catalog order, so every item's full SID is unique. The quantiser is
fitted once (``fit``) and frozen; ``assign`` gives new (cold) items their SIDs from the frozen quantiser plus the
next free dedup token of their prefix, and appends them to the catalog.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from genrecedit.errors import (
    ArtifactMismatchError,
    DuplicateItemError,
    EmptyInputError,
    GenRecEditError,
    UnknownItemError,
)
from genrecedit.tokenizer.config import TokenizerConfig
from genrecedit.tokenizer.quantizer import ResidualQuantizer
from genrecedit.tokenizer.rqkmeans import ResidualKMeans
from genrecedit.tokenizer.rqvae import RQVAEQuantizer
from genrecedit.tokenizer.stats import sid_stats
from genrecedit.tokenizer.storage import CODES_FILE, CONFIG_FILE, QUANTIZER_FILE, write_artifact

FORMAT_VERSION = 1
_QUANTIZERS: dict[str, type[ResidualQuantizer]] = {"rqkmeans": ResidualKMeans, "rqvae": RQVAEQuantizer}
_ZERO_NORM = 1e-12


class SemanticIdTokenizer:
    """Catalog of item ids with their SIDs ``[n_items, levels + 1]`` int64, and the frozen quantiser behind them."""

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        self.config = config or TokenizerConfig()
        self._quantizer: ResidualQuantizer | None = None
        self._item_ids: list[str] = []
        self._index: dict[str, int] = {}
        self._codes = np.zeros((0, self.config.levels + 1), dtype=np.int64)
        self._next_dedup: dict[tuple[int, ...], int] = {}

    # ------------------------------------------------------------------ fitting and assigning
    def fit(self, embeddings: np.ndarray, item_ids: list[str]) -> SemanticIdTokenizer:
        """Fit the quantiser on ``embeddings [n, d]`` of ``item_ids [n]`` and assign all of them their SIDs."""
        x = self._check_embeddings(embeddings, item_ids, input_dim=None)
        if x.shape[0] == 0:
            raise EmptyInputError("cannot fit a tokenizer on an empty catalog")
        self._check_new_ids(item_ids, catalog={})
        quantizer = _QUANTIZERS[self.config.kind](self.config, input_dim=x.shape[1])
        quantizer.fit(x)
        prefixes = quantizer.encode(x)
        dedup, next_dedup = self._dedup_tokens(prefixes, item_ids, {})
        self._quantizer = quantizer
        self._item_ids = list(item_ids)
        self._index = {item: i for i, item in enumerate(item_ids)}
        self._codes = np.concatenate([prefixes, dedup[:, None]], axis=1)
        self._next_dedup = next_dedup
        return self

    def assign(self, new_embeddings: np.ndarray, new_item_ids: list[str]) -> np.ndarray:
        """SIDs ``[m, levels + 1]`` of new items from the frozen quantiser; the items join the catalog.

        All-or-nothing: on any error (duplicate id, wrong dimension, exhausted dedup capacity) the catalog is
        unchanged. The quantiser is never refitted.
        """
        quantizer = self._require_fitted()
        x = self._check_embeddings(new_embeddings, new_item_ids, input_dim=quantizer.input_dim)
        self._check_new_ids(new_item_ids, catalog=self._index)
        if x.shape[0] == 0:
            return np.zeros((0, self.config.levels + 1), dtype=np.int64)
        prefixes = quantizer.encode(x)
        dedup, next_dedup = self._dedup_tokens(prefixes, new_item_ids, self._next_dedup)
        codes = np.concatenate([prefixes, dedup[:, None]], axis=1)
        start = len(self._item_ids)
        self._item_ids.extend(new_item_ids)
        self._index.update({item: start + i for i, item in enumerate(new_item_ids)})
        self._codes = np.concatenate([self._codes, codes], axis=0)
        self._next_dedup = next_dedup
        return codes.copy()

    def _dedup_tokens(
        self, prefixes: np.ndarray, item_ids: list[str], next_dedup: dict[tuple[int, ...], int]
    ) -> tuple[np.ndarray, dict[tuple[int, ...], int]]:
        """``[m, levels]`` prefixes -> (``[m]`` dedup tokens, updated copy of next free token per prefix)."""
        capacity = self.config.dedup_size
        updated = dict(next_dedup)
        tokens = np.zeros(prefixes.shape[0], dtype=np.int64)
        for i, prefix in enumerate(map(tuple, prefixes.tolist())):
            token = updated.get(prefix, 0)
            if token >= capacity:
                raise GenRecEditError(
                    f"item {item_ids[i]!r}: prefix {list(prefix)} already holds {capacity} items, the dedup "
                    f"capacity; raise dedup_capacity (or codebook_size / levels) and refit the tokenizer"
                )
            tokens[i] = token
            updated[prefix] = token + 1
        return tokens, updated

    def _check_embeddings(self, embeddings: np.ndarray, item_ids: list[str], input_dim: int | None) -> np.ndarray:
        """Check ``[n, d]`` against ``item_ids [n]`` and the fitted d; return float32 (L2-normalised if configured)."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != len(item_ids):
            raise GenRecEditError(f"expected embeddings [n={len(item_ids)}, d], got shape {x.shape}")
        if input_dim is not None and x.shape[1] != input_dim:
            raise ArtifactMismatchError(
                f"embeddings are {x.shape[1]}-d but the tokenizer was fitted on {input_dim}-d ones "
                "(a different text encoder?)"
            )
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        if bad.size:
            raise GenRecEditError(f"embedding of item {item_ids[bad[0]]!r} contains NaN or inf")
        if self.config.normalize and x.shape[0]:
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            zero = np.flatnonzero(norms[:, 0] < _ZERO_NORM)
            if zero.size:
                raise GenRecEditError(f"embedding of item {item_ids[zero[0]]!r} is all zeros; cannot normalise it")
            x = x / norms
        return x

    @staticmethod
    def _check_new_ids(item_ids: list[str], catalog: dict[str, int]) -> None:
        seen: set[str] = set()
        for item in item_ids:
            if item in catalog:
                raise DuplicateItemError(f"item {item!r} is already in the tokenizer's catalog")
            if item in seen:
                raise DuplicateItemError(f"item {item!r} occurs twice in the batch")
            seen.add(item)

    def _require_fitted(self) -> ResidualQuantizer:
        if self._quantizer is None:
            raise GenRecEditError("the tokenizer is not fitted; call fit() or SemanticIdTokenizer.load()")
        return self._quantizer

    # ------------------------------------------------------------------ reading
    @property
    def codes(self) -> np.ndarray:
        """``[n_items, levels + 1]`` int64 SIDs in catalog order (read-only view)."""
        view = self._codes.view()
        view.flags.writeable = False
        return view

    @property
    def item_ids(self) -> list[str]:
        """Catalog order: fitted items first, then assigned ones in the order they were assigned."""
        return list(self._item_ids)

    @property
    def levels(self) -> int:
        """Quantiser levels (SID length minus the dedup token)."""
        return self.config.levels

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Vocabulary of each SID position: ``levels`` times K, then the dedup capacity."""
        return self.config.codebook_sizes

    @property
    def input_dim(self) -> int:
        """Embedding size the quantiser was fitted on."""
        return self._require_fitted().input_dim

    @property
    def quantizer(self) -> ResidualQuantizer:
        """The frozen quantiser (read it, do not refit it)."""
        return self._require_fitted()

    def __len__(self) -> int:
        return len(self._item_ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def lookup(self, item_ids: list[str]) -> np.ndarray:
        """``[m]`` item ids -> ``[m, levels + 1]`` int64 SIDs; ``UnknownItemError`` for an id not in the catalog."""
        try:
            rows = [self._index[item] for item in item_ids]
        except KeyError as exc:
            raise UnknownItemError(f"item {exc.args[0]!r} is not in the tokenizer's catalog") from exc
        return self._codes[np.asarray(rows, dtype=np.int64)].copy()

    def stats(self) -> dict[str, Any]:
        """Codebook usage and collisions (see ``sid_stats``), JSON-ready."""
        return sid_stats(self._codes, self._require_fitted().codes_per_level)

    # ------------------------------------------------------------------ identity and persistence
    def quantizer_hash(self) -> str:
        """sha256 over the config and the quantiser's tensors: unchanged by ``assign`` (the frozen part)."""
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for name, tensor in sorted(self._require_fitted().tensors().items()):
            h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            h.update(tensor.numpy().tobytes())
        return h.hexdigest()

    def content_hash(self) -> str:
        """sha256 over the quantiser (``quantizer_hash``), the item ids and their codes: changes with ``assign``."""
        h = hashlib.sha256(self.quantizer_hash().encode())
        h.update(json.dumps(self._item_ids).encode())
        h.update(np.ascontiguousarray(self._codes, dtype="<i8").tobytes())
        return h.hexdigest()

    def save(self, directory: Path) -> None:
        """Write ``tokenizer.json``, ``quantizer.safetensors``, ``codes.safetensors`` into ``directory`` atomically."""
        meta = {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "input_dim": self.input_dim,
            "item_ids": self._item_ids,
            "content_hash": self.content_hash(),
        }
        write_artifact(Path(directory), meta, self._require_fitted().tensors(),
                       {"codes": torch.from_numpy(np.ascontiguousarray(self._codes))})

    @classmethod
    def load(cls, directory: Path) -> SemanticIdTokenizer:
        """Inverse of ``save``; ``ArtifactMismatchError`` if files are missing, malformed or do not hash back."""
        directory = Path(directory)
        missing = [f for f in (CONFIG_FILE, QUANTIZER_FILE, CODES_FILE) if not (directory / f).is_file()]
        if missing:
            raise ArtifactMismatchError(f"{directory}: not a saved tokenizer (missing {', '.join(missing)})")
        meta = json.loads((directory / CONFIG_FILE).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactMismatchError(f"{directory}: tokenizer format {meta.get('format_version')!r}, "
                                        f"this code reads {FORMAT_VERSION}")
        tok = cls(TokenizerConfig.from_dict(meta["config"]))
        quantizer = _QUANTIZERS[tok.config.kind](tok.config, input_dim=int(meta["input_dim"]))
        quantizer.load_tensors(load_file(str(directory / QUANTIZER_FILE)))
        codes = load_file(str(directory / CODES_FILE))["codes"].numpy().astype(np.int64)
        item_ids = [str(item) for item in meta["item_ids"]]
        if codes.shape != (len(item_ids), tok.config.levels + 1):
            raise ArtifactMismatchError(f"{directory}: codes of shape {codes.shape} for {len(item_ids)} items")
        tok._quantizer = quantizer
        tok._item_ids = item_ids
        tok._index = {item: i for i, item in enumerate(item_ids)}
        tok._codes = codes
        tok._next_dedup = _next_free_dedup(codes)
        if tok.content_hash() != meta.get("content_hash"):
            raise ArtifactMismatchError(f"{directory}: content hash does not match its files (corrupt or edited)")
        return tok


def _next_free_dedup(codes: np.ndarray) -> dict[tuple[int, ...], int]:
    """``[n, levels + 1]`` -> next free dedup token of every prefix present (max + 1)."""
    out: dict[tuple[int, ...], int] = {}
    for row in codes.tolist():
        prefix = tuple(row[:-1])
        out[prefix] = max(out.get(prefix, 0), row[-1] + 1)
    return out
