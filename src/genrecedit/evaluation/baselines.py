"""Popularity rankers (docs/method.md §6): MostPop (training period) and RecentPop (validation period).

Both give every case the same list and do not filter items the user already has in their history: the generative
models are scored the same way (repeat consumption is a valid target), so the baselines stay comparable.
"""
from __future__ import annotations

import numpy as np

from genrecedit.data.dataset import CaseSet, Split
from genrecedit.evaluation.metrics import EMPTY_SLOT


def popularity_topk(counts: np.ndarray, n_cases: int, k: int) -> np.ndarray:
    """The k most frequent items, the same list for every case.

    counts: [n_items] non-negative interaction counts. Returns [n_cases, k] int64, most frequent first, ties broken
    by the lower item index. Items with a zero count are never listed (there is no evidence to rank them by);
    when fewer than k items have a positive count the remaining slots are ``EMPTY_SLOT``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = np.argsort(-counts, kind="stable")[:k]  # stable: equal counts keep ascending item index
    order = order[counts[order] > 0]
    row = np.full(k, EMPTY_SLOT, dtype=np.int64)
    row[: order.shape[0]] = order
    return np.tile(row, (n_cases, 1))


def train_counts(split: Split) -> np.ndarray:
    """[n_items] int64 occurrences of each item in the (test-user-filtered) training sequences."""
    sequences = [np.asarray(seq, dtype=np.int64) for seq in split.train_sequences]
    items = np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int64)
    return np.bincount(items, minlength=split.n_items).astype(np.int64)


def valid_target_counts(split: Split) -> np.ndarray:
    """[n_items] int64 occurrences of each item among the validation cases' targets (may include cold items)."""
    return np.bincount(split.valid.targets, minlength=split.n_items).astype(np.int64)


def most_popular(split: Split, k: int, cases: CaseSet | None = None) -> np.ndarray:
    """MostPop: [n_cases, k] the k most frequent training items, for each of ``cases`` (default ``split.test``).

    Never lists a cold item, by construction.
    """
    cases = split.test if cases is None else cases
    return popularity_topk(train_counts(split), len(cases), k)


def recent_popular(split: Split, k: int, cases: CaseSet | None = None) -> np.ndarray:
    """RecentPop: [n_cases, k] the k most frequent validation-period targets, for each of ``cases``
    (default ``split.test``). The validation period precedes the test period, so this leaks nothing, and it can
    list items that are cold with respect to training: a strong cold-case baseline."""
    cases = split.test if cases is None else cases
    return popularity_topk(valid_target_counts(split), len(cases), k)
