"""Percentile bootstrap confidence intervals for per-case metric means, single and paired."""
from __future__ import annotations

import numpy as np

from genrecedit.errors import EmptyInputError

DEFAULT_N_BOOT = 1000
DEFAULT_ALPHA = 0.05
# Resampled indices are drawn in blocks of at most this many elements, so memory stays bounded for any
# number of cases (1000 replicates x 30k cases would otherwise be a 240 MB index matrix).
MAX_BLOCK_ELEMENTS = 1 << 22


def bootstrap_ci(
    values: np.ndarray, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, alpha: float = DEFAULT_ALPHA
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the mean of ``values``.

    values: [n] per-case metric values (n >= 1). Cases are resampled with replacement ``n_boot`` times with a
    ``numpy.random.default_rng(seed)`` stream, so the same inputs and seed always give the same interval.
    Returns (lo, hi) as Python floats, lo <= hi. An all-zero array gives exactly (0.0, 0.0).
    """
    values = np.asarray(values, dtype=np.float64)
    _check(values, n_boot, alpha)
    means = _resampled_means(values, n_boot, seed)
    lo, hi = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def paired_bootstrap_diff(
    a: np.ndarray, b: np.ndarray, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, alpha: float = DEFAULT_ALPHA
) -> tuple[float, float, float]:
    """Mean of ``a - b`` with a paired percentile bootstrap interval.

    a, b: [n] per-case values of two systems on the *same* cases in the same order (e.g.
    ``EvalResult.per_case("ndcg@10", "cold")`` of an edited and an unedited model). Resampling cases (not the two
    systems independently) removes the between-case variance both systems share.
    Returns (mean_diff, lo, hi); identical inputs give exactly (0.0, 0.0, 0.0).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same shape, got {a.shape} and {b.shape}")
    diff = a - b
    _check(diff, n_boot, alpha)
    lo, hi = bootstrap_ci(diff, n_boot=n_boot, seed=seed, alpha=alpha)
    return float(diff.mean()), lo, hi


def _resampled_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[n] -> [n_boot] means of bootstrap resamples, drawn block by block from one seeded stream."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    block = max(1, MAX_BLOCK_ELEMENTS // n)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    return means


def _check(values: np.ndarray, n_boot: int, alpha: float) -> None:
    if values.ndim != 1:
        raise ValueError(f"expected a 1-d array of per-case values, got shape {values.shape}")
    if values.shape[0] == 0:
        raise EmptyInputError("cannot bootstrap an empty set of cases (is the subset empty?)")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
