"""Per-case ranking metrics over top-K item lists (docs/method.md §4), vectorised with numpy.

Every function takes the ranked lists a recommender returns, ``topk_items`` [n, K] int64 of item indices, best
first, with ``EMPTY_SLOT`` (-1) where a model returned fewer than K items (a constrained beam that ran out of
completions, a popularity list longer than the items it has evidence for). Each case has exactly one target.

Metrics return one value per case, so subsets (warm / cold) and paired bootstraps are a matter of indexing.
"""
from __future__ import annotations

import numpy as np

EMPTY_SLOT = -1  # a top-K slot with no item
NOT_FOUND = np.iinfo(np.int64).max  # rank of a target absent from the list: >= any cutoff k


def target_ranks(topk_items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each case's target in its list.

    topk_items: [n, K] int64, ``EMPTY_SLOT`` for empty slots. targets: [n] int64 item indices (never negative).
    Returns [n] int64: the position of the first occurrence of the target, or ``NOT_FOUND`` when absent. The sentinel
    is larger than any cutoff, so ``rank < k`` is a hit test for every k, including k > K.
    """
    hits = topk_items == targets[:, None]
    return _first_hit(hits)


def recall_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """[n] float64: 1.0 where the target is within the first k slots, else 0.0 (one target per case)."""
    return (ranks < k).astype(np.float64)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """[n] float64: 1 / log2(rank + 2) where rank < k, else 0.0.

    With a single relevant item the ideal DCG is 1, so this is NDCG@k exactly.
    """
    hit = ranks < k
    safe_rank = np.where(hit, ranks, 0).astype(np.float64)
    return np.where(hit, 1.0 / np.log2(safe_rank + 2.0), 0.0)


def iid_ratio_at(topk_items: np.ndarray, subset_items: np.ndarray, k: int) -> np.ndarray:
    """Share of each case's top-k slots that hold an item of a subset (IID Ratio@k, docs/method.md §4).

    topk_items: [n, K] int64. subset_items: [n_items] bool, True for items of the subset (e.g. cold items).
    Returns [n] float64 in [0, 1]. The denominator is always k: empty slots, and slots beyond K when k > K, count
    as not in the subset. This is the share of top-K that the paper's tables show, not Eq. 1 as printed (which
    divides by the subset's size and cannot give Table 2's values).
    """
    slots = topk_items[:, :k]
    filled = slots != EMPTY_SLOT
    in_subset = np.zeros(slots.shape, dtype=bool)
    in_subset[filled] = subset_items[slots[filled]]
    return in_subset.sum(axis=1) / float(k)


def prefix_ranks(topk_items: np.ndarray, targets: np.ndarray, codes: np.ndarray, n_tokens: int) -> np.ndarray:
    """Rank of the target when only the first ``n_tokens`` SID tokens identify an item (paper Fig. 3, left).

    topk_items: [n, K] int64. targets: [n] int64. codes: [n_items, P] int64, the SID codes of every catalog item.
    n_tokens: 1..P. Returns [n] int64: the 0-based position of the *first* list item whose first n_tokens codes
    equal the target's, or ``NOT_FOUND``.

    First-hit choice: positions are those of the original item list; later items that repeat an already-seen prefix
    are not collapsed away (collapsing would move unrelated items up and make the ranks incomparable with the item
    ranks). Consequences: prefix rank <= item rank, it never decreases as n_tokens grows, and with unique full SIDs
    ``prefix_ranks(..., n_tokens=P) == target_ranks(...)``.
    """
    n_positions = codes.shape[1]
    if not 1 <= n_tokens <= n_positions:
        raise ValueError(f"n_tokens must be in 1..{n_positions} (the SID length), got {n_tokens}")
    filled = topk_items != EMPTY_SLOT
    list_prefix = codes[np.where(filled, topk_items, 0), :n_tokens]  # [n, K, n_tokens]
    target_prefix = codes[targets, :n_tokens]  # [n, n_tokens]
    hits = (list_prefix == target_prefix[:, None, :]).all(axis=2) & filled
    return _first_hit(hits)


def _first_hit(hits: np.ndarray) -> np.ndarray:
    """[n, K] bool -> [n] int64: index of the first True per row, ``NOT_FOUND`` for rows without one."""
    if hits.shape[1] == 0:
        return np.full(hits.shape[0], NOT_FOUND, dtype=np.int64)
    first = hits.argmax(axis=1).astype(np.int64)
    return np.where(hits.any(axis=1), first, NOT_FOUND)
