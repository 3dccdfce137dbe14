"""Codebook usage and collision statistics of a SID table."""
from __future__ import annotations

from typing import Any

import numpy as np


def perplexity(codes: np.ndarray) -> float:
    """``[n]`` codes -> exp(entropy) of their empirical distribution (= number of codes if used uniformly)."""
    if codes.size == 0:
        return 0.0
    p = np.bincount(codes) / codes.size
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def sid_stats(codes: np.ndarray, codes_per_level: tuple[int, ...]) -> dict[str, Any]:
    """``[n, levels + 1]`` SIDs -> JSON-ready statistics.

    levels: per quantiser level ``{"codebook_size", "used_codes", "perplexity"}`` (codebook_size = codes available).
    colliding_items: items whose ``levels``-code prefix is shared with at least one other item.
    max_items_per_prefix: the largest prefix group (the dedup token needed is this minus one).
    distinct_sids: distinct full SIDs, equal to n_items for a valid table.
    """
    levels = codes.shape[1] - 1
    n = int(codes.shape[0])
    per_level = [
        {
            "codebook_size": int(codes_per_level[level]),
            "used_codes": int(np.unique(codes[:, level]).size),
            "perplexity": round(perplexity(codes[:, level]), 3),
        }
        for level in range(levels)
    ]
    if n:
        _, group_sizes = np.unique(codes[:, :levels], axis=0, return_counts=True)
    else:
        group_sizes = np.zeros(0, dtype=np.int64)
    return {
        "n_items": n,
        "levels": per_level,
        "distinct_prefixes": int(group_sizes.size),
        "colliding_items": int(group_sizes[group_sizes > 1].sum()),
        "max_items_per_prefix": int(group_sizes.max()) if n else 0,
        "distinct_sids": int(np.unique(codes, axis=0).shape[0]) if n else 0,
    }
