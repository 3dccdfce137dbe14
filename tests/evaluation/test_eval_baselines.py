"""Popularity baselines: counts, tie-breaking, and zero-count items."""
from __future__ import annotations

import numpy as np

from genrecedit.data.dataset import CaseSet, Split
from genrecedit.evaluation.baselines import (
    most_popular,
    popularity_topk,
    recent_popular,
    train_counts,
    valid_target_counts,
)
from genrecedit.evaluation.metrics import EMPTY_SLOT

MAX_HISTORY = 2


def _cases(targets: list[int]) -> CaseSet:
    n = len(targets)
    return CaseSet(
        np.arange(n, dtype=np.int64), np.full((n, MAX_HISTORY), -1, np.int64), np.array(targets, np.int64),
        np.zeros(n),
    )


def _split() -> Split:
    train_sequences = [np.array([2, 1, 2]), np.array([1, 0]), np.array([], dtype=np.int64)]
    warm = np.array([True, True, True, False, False])
    return Split("time", "toy", [f"i{i}" for i in range(5)], ["u0", "u1", "u2"], train_sequences,
                 _cases([1, 2]), _cases([4, 4, 3, 0]), _cases([0, 1, 3]), warm, MAX_HISTORY)


def test_popularity_ties_by_index_and_zero_counts_left_empty():
    counts = np.array([3, 5, 5, 0, 1])
    assert popularity_topk(counts, 2, 3).tolist() == [[1, 2, 0]] * 2
    assert popularity_topk(counts, 1, 6).tolist() == [[1, 2, 0, 4, EMPTY_SLOT, EMPTY_SLOT]]
    assert popularity_topk(counts, 0, 2).shape == (0, 2)


def test_most_popular_uses_training_sequences():
    split = _split()
    assert train_counts(split).tolist() == [1, 2, 2, 0, 0]
    top = most_popular(split, 3)
    assert top.shape == (3, 3) and top.tolist() == [[1, 2, 0]] * 3
    assert not (~split.warm[top[top != EMPTY_SLOT]]).any()


def test_recent_popular_uses_validation_targets_and_can_list_cold_items():
    split = _split()
    assert valid_target_counts(split).tolist() == [1, 0, 0, 1, 2]
    top = recent_popular(split, 2, cases=split.valid)
    assert top.tolist() == [[4, 0]] * 4
