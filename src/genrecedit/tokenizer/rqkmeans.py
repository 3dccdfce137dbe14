"""Residual k-means (RQ-KMeans): k-means on the embeddings, then on what the first level leaves, and so on."""
from __future__ import annotations

import numpy as np
import torch

from genrecedit.errors import ArtifactMismatchError
from genrecedit.tokenizer.config import TokenizerConfig
from genrecedit.tokenizer.quantizer import ResidualQuantizer, kmeans_centers, nearest_code


class ResidualKMeans(ResidualQuantizer):
    """``levels`` codebooks fitted greedily: level l clusters the residuals ``x - sum_{j<l} centre_j``.

    Codebook l is ``[K_l, input_dim]`` with ``K_l = min(codebook_size, distinct residuals)``. No decoder, no
    training loop: cheaper than the RQ-VAE and deterministic given the seed. Assignment uses float64 distances so
    that codes do not depend on float32 rounding of the matmul.
    """

    def __init__(self, config: TokenizerConfig, input_dim: int) -> None:
        super().__init__(config, input_dim)
        self._codebooks: list[torch.Tensor] = []  # level l: [K_l, input_dim] float32

    def fit(self, x: np.ndarray) -> None:
        """Fit level by level on ``[n, input_dim]``; level l's k-means is seeded with ``seed + l``."""
        residual = x.astype(np.float64)
        self._codebooks = []
        for level in range(self.config.levels):
            centers = kmeans_centers(
                residual.astype(np.float32), self.config.codebook_size, self.config.seed + level,
                self.config.kmeans_max_iter,
            )
            self._codebooks.append(torch.from_numpy(centers))
            codes = self._nearest(residual, level)
            residual = residual - centers.astype(np.float64)[codes]

    def encode(self, x: np.ndarray) -> np.ndarray:
        """``[n, input_dim] -> [n, levels]`` int64, nearest centre of each level's residual."""
        residual = x.astype(np.float64)
        codes = np.zeros((x.shape[0], self.config.levels), dtype=np.int64)
        for level, centers in enumerate(self._codebooks):
            codes[:, level] = self._nearest(residual, level)
            residual = residual - centers.numpy().astype(np.float64)[codes[:, level]]
        return codes

    def _nearest(self, residual: np.ndarray, level: int) -> np.ndarray:
        """``[n, input_dim]`` float64 -> ``[n]`` int64 nearest code of ``level``."""
        centers = self._codebooks[level].to(torch.float64)
        return nearest_code(torch.from_numpy(residual), centers).numpy()

    @property
    def codes_per_level(self) -> tuple[int, ...]:
        return tuple(int(cb.shape[0]) for cb in self._codebooks)

    def tensors(self) -> dict[str, torch.Tensor]:
        """``{"codebook.<l>": [K_l, input_dim] float32}``."""
        return {f"codebook.{level}": cb.contiguous() for level, cb in enumerate(self._codebooks)}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        try:
            books = [tensors[f"codebook.{level}"] for level in range(self.config.levels)]
        except KeyError as exc:
            raise ArtifactMismatchError(f"RQ-KMeans state lacks {exc.args[0]!r}") from exc
        for level, cb in enumerate(books):
            if cb.ndim != 2 or cb.shape[1] != self.input_dim:
                raise ArtifactMismatchError(
                    f"RQ-KMeans codebook {level} has shape {tuple(cb.shape)}, expected [K, {self.input_dim}]"
                )
        self._codebooks = [cb.to(torch.float32).contiguous() for cb in books]
