"""Ranking metrics on hand-computed cases, plus the invariants they must keep on any input."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrecedit.evaluation.metrics import (
    EMPTY_SLOT,
    NOT_FOUND,
    iid_ratio_at,
    ndcg_at,
    prefix_ranks,
    recall_at,
    target_ranks,
)

# item -> 3 SID codes; items 1 and 3 share the first two codes, items 0 and 1 the first one.
CODES = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=np.int64)


def test_target_ranks_first_occurrence_and_absent():
    topk = np.array([[5, 3, 1], [2, 7, 9], [4, EMPTY_SLOT, EMPTY_SLOT], [3, 3, 1]], dtype=np.int64)
    targets = np.array([5, 9, 8, 3], dtype=np.int64)
    assert target_ranks(topk, targets).tolist() == [0, 2, NOT_FOUND, 0]


def test_target_ranks_empty_lists():
    ranks = target_ranks(np.zeros((2, 0), dtype=np.int64), np.array([0, 1]))
    assert ranks.tolist() == [NOT_FOUND, NOT_FOUND]


def test_recall_and_ndcg_by_hand():
    ranks = np.array([0, 2, NOT_FOUND], dtype=np.int64)
    assert recall_at(ranks, 1).tolist() == [1.0, 0.0, 0.0]
    assert recall_at(ranks, 3).tolist() == [1.0, 1.0, 0.0]
    assert ndcg_at(ranks, 3).tolist() == [1.0, 0.5, 0.0]  # 1/log2(2), 1/log2(4)
    assert ndcg_at(ranks, 2).tolist() == [1.0, 0.0, 0.0]
    assert ndcg_at(np.array([1]), 2)[0] == pytest.approx(1.0 / np.log2(3.0), abs=0.0)


def test_absent_target_is_a_miss_even_for_large_k():
    assert recall_at(np.array([NOT_FOUND]), 10**9).tolist() == [0.0]


def test_iid_ratio_counts_empty_slots_as_outside():
    subset = np.array([True, False, True, False, False])
    topk = np.array([[0, 1, 2, EMPTY_SLOT], [3, 4, 1, 1]], dtype=np.int64)
    assert iid_ratio_at(topk, subset, 4).tolist() == [0.5, 0.0]
    assert iid_ratio_at(topk, subset, 2).tolist() == [0.5, 0.0]
    assert iid_ratio_at(topk, subset, 1).tolist() == [1.0, 0.0]
    assert iid_ratio_at(topk, subset, 5).tolist() == [0.4, 0.0]  # k beyond K: still k in the denominator


def test_prefix_ranks_by_hand():
    topk = np.array([[2, 1, 3], [2, 1, 3]], dtype=np.int64)
    targets = np.array([3, 0], dtype=np.int64)
    assert prefix_ranks(topk, targets, CODES, 1).tolist() == [1, 1]  # item 1 shares code 0 with both
    assert prefix_ranks(topk, targets, CODES, 2).tolist() == [1, NOT_FOUND]
    assert prefix_ranks(topk, targets, CODES, 3).tolist() == [2, NOT_FOUND]


def test_prefix_ranks_ignore_empty_slots():
    topk = np.array([[EMPTY_SLOT, 0]], dtype=np.int64)  # the empty slot must not pose as item 0
    assert prefix_ranks(topk, np.array([0]), CODES, 3).tolist() == [1]


@pytest.mark.parametrize("n_tokens", [0, 4])
def test_prefix_ranks_reject_bad_length(n_tokens):
    with pytest.raises(ValueError, match="n_tokens"):
        prefix_ranks(np.array([[0]]), np.array([0]), CODES, n_tokens)


@settings(max_examples=60, deadline=None)
@given(
    ranks=st.lists(st.one_of(st.integers(0, 60), st.just(int(NOT_FOUND))), min_size=1, max_size=30),
    k_small=st.integers(1, 30),
    k_extra=st.integers(0, 30),
)
def test_ndcg_below_recall_and_monotone_in_k(ranks, k_small, k_extra):
    ranks = np.array(ranks, dtype=np.int64)
    k_large = k_small + k_extra
    for k in (k_small, k_large):
        rec, ndcg = recall_at(ranks, k), ndcg_at(ranks, k)
        assert np.all(0.0 <= ndcg) and np.all(ndcg <= rec) and np.all(rec <= 1.0)
    assert np.all(recall_at(ranks, k_small) <= recall_at(ranks, k_large))
    assert np.all(ndcg_at(ranks, k_small) <= ndcg_at(ranks, k_large))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_items=st.integers(1, 12), width=st.integers(1, 8), n_positions=st.integers(1, 4))
def test_prefix_ranks_nest_and_meet_item_ranks(data, n_items, width, n_positions):
    code = st.integers(0, 2)
    codes = np.array(data.draw(st.lists(st.lists(code, min_size=n_positions, max_size=n_positions),
                                        min_size=n_items, max_size=n_items)), dtype=np.int64)
    unique = np.unique(codes, axis=0).shape[0] == n_items
    topk = np.array(data.draw(st.lists(st.lists(st.integers(EMPTY_SLOT, n_items - 1), min_size=width,
                                                max_size=width), min_size=1, max_size=6)), dtype=np.int64)
    targets = np.array(data.draw(st.lists(st.integers(0, n_items - 1), min_size=len(topk), max_size=len(topk))))
    item_ranks = target_ranks(topk, targets)
    by_length = [prefix_ranks(topk, targets, codes, n) for n in range(1, n_positions + 1)]
    for shorter, longer in zip(by_length, by_length[1:]):
        assert np.all(shorter <= longer)
    assert np.all(by_length[-1] <= item_ranks)
    if unique:
        assert by_length[-1].tolist() == item_ranks.tolist()
