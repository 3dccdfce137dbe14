"""What every residual quantiser provides, and the k-means / nearest-code helpers they share."""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import numpy as np
import torch
from sklearn.cluster import KMeans

from genrecedit.tokenizer.config import TokenizerConfig

logger = logging.getLogger(__name__)


class ResidualQuantizer(ABC):
    """Maps ``[n, input_dim]`` embeddings to ``[n, levels]`` codes through ``levels`` residual codebooks.

    After ``fit`` the quantiser is frozen: ``encode`` is a pure function of its tensors, so a saved and reloaded
    quantiser gives bit-identical codes.
    """

    def __init__(self, config: TokenizerConfig, input_dim: int) -> None:
        self.config = config
        self.input_dim = input_dim

    @abstractmethod
    def fit(self, x: np.ndarray) -> None:
        """Learn the codebooks from ``[n, input_dim]`` float32 embeddings."""

    @abstractmethod
    def encode(self, x: np.ndarray) -> np.ndarray:
        """``[n, input_dim]`` float32 -> ``[n, levels]`` int64 codes; level l's codes are < ``codes_per_level[l]``."""

    @property
    @abstractmethod
    def codes_per_level(self) -> tuple[int, ...]:
        """Codes actually available per level (``codebook_size``, or fewer for a tiny catalog)."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every learned tensor by name (contiguous, on CPU), for safetensors and the content hash."""

    @abstractmethod
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the state ``tensors`` returned (the config must be the one it was fitted with)."""


def distinct_rows(x: np.ndarray) -> int:
    """Number of distinct rows of ``[n, d]``."""
    return int(np.unique(x, axis=0).shape[0]) if x.shape[0] else 0


def kmeans_centers(x: np.ndarray, k: int, seed: int, max_iter: int) -> np.ndarray:
    """``[n, d] -> [k', d]`` float32 k-means centres (sklearn, one seeded k-means++ init).

    ``k' = min(k, distinct rows of x)``: asking for more clusters than distinct points only yields duplicate
    centres (a tiny catalog, or residuals that are already zero).
    """
    k_eff = min(k, distinct_rows(x))
    if k_eff < k:
        logger.info("k-means: %d distinct points, using %d clusters instead of %d", k_eff, k_eff, k)
    km = KMeans(n_clusters=k_eff, n_init=1, random_state=seed, max_iter=max_iter)
    km.fit(x.astype(np.float32, copy=False))
    return np.asarray(km.cluster_centers_, dtype=np.float32)


def nearest_code(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``[n, d], [k, d] -> [n]`` int64 index of the nearest centre (squared Euclidean; ties -> lowest index)."""
    scores = (centers * centers).sum(-1) - 2.0 * (x @ centers.T)  # ||x||^2 is constant per row
    return scores.argmin(dim=-1)
