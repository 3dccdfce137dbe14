"""Residual k-means quantiser."""
from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

from genrecedit.tokenizer import ResidualKMeans, TokenizerConfig

DIM = 12


def test_level0_is_sklearn_kmeans_and_residuals_shrink() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, DIM)).astype(np.float32)
    cfg = TokenizerConfig(kind="rqkmeans", levels=3, codebook_size=16, seed=4)
    q = ResidualKMeans(cfg, DIM)
    q.fit(x)
    ref = KMeans(n_clusters=16, n_init=1, random_state=4, max_iter=cfg.kmeans_max_iter).fit(x)
    np.testing.assert_allclose(q.tensors()["codebook.0"].numpy(), ref.cluster_centers_, rtol=1e-5, atol=1e-6)
    codes = q.encode(x)
    assert codes.shape == (300, 3) and q.codes_per_level == (16, 16, 16)
    residual, errors = x.astype(np.float64), []
    for level in range(3):
        residual = residual - q.tensors()[f"codebook.{level}"].numpy()[codes[:, level]]
        errors.append(float((residual**2).sum(1).mean()))
    assert errors[0] > errors[1] > errors[2]


def test_tiny_catalog_uses_fewer_codes() -> None:
    x = np.eye(4, DIM, dtype=np.float32)
    q = ResidualKMeans(TokenizerConfig(kind="rqkmeans", levels=2, codebook_size=8), DIM)
    q.fit(x)
    assert q.codes_per_level[0] == 4  # capped at the number of points
    assert q.codes_per_level[1] == 1  # every residual is zero after level 0
    assert np.unique(q.encode(x)[:, 0]).size == 4
