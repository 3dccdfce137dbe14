"""``successor`` knowledge: histories that end with a text-similar warm item (h + [j] -> cold item)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from genrecedit.config import load_config
from genrecedit.data.dataset import PAD_ITEM, CaseSet
from genrecedit.data.protocols import SplitConfig, make_split
from genrecedit.edit.knowledge import (extended_histories, nearest_warm, pseudo_histories, row_ids,
                                       successor_histories)
from genrecedit.errors import ConfigError
from knowledge_data import random_dataset

P = PAD_ITEM


def _train() -> CaseSet:
    """Three users, max_history 3. u0: 1 2 5; u1: 3 5 2 4; u2: 6 7 8 5. Warm: 1..8; 0 and 9..11 are cold.

    Occurrences of 5: sample 2 (u0's last: [1,2,5] is no training history), 4 (u1 goes on: [_,3,5] is sample 5's
    history), 10 (u2's last, [6,7,8]+5 truncated to [7,8,5]). Of 2: samples 1 and 5, both followed by a training
    sample ([_,1,2] and [3,5,2])."""
    rows = [  # user, history, target, time
        (0, [P, P, P], 1, 1), (0, [P, P, 1], 2, 2), (0, [P, 1, 2], 5, 3),
        (1, [P, P, P], 3, 4), (1, [P, P, 3], 5, 5), (1, [P, 3, 5], 2, 6), (1, [3, 5, 2], 4, 7),
        (2, [P, P, P], 6, 8), (2, [P, P, 6], 7, 9), (2, [P, 6, 7], 8, 10), (2, [6, 7, 8], 5, 11),
    ]
    return CaseSet(np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64),
                   np.array([r[2] for r in rows], np.int64), np.array([r[3] for r in rows], np.float64))


N_ITEMS = 12


def _warm(train: CaseSet) -> np.ndarray:
    warm = np.zeros(N_ITEMS, bool)
    warm[train.targets] = True
    return warm


def _embeddings() -> np.ndarray:
    """Cold 9, 10, 11: most similar warm item 5, then 2; every other warm item points away."""
    emb = np.array([[-1.0, 0.01 * i] for i in range(N_ITEMS)], np.float32)
    emb[5], emb[2] = [1.0, 0.0], [0.8, 0.6]
    emb[9], emb[10], emb[11] = [1.0, 0.1], [1.0, 0.12], [1.0, 0.14]
    return emb


def _successor(items, per_item, neighbours=2):
    train = _train()
    return successor_histories(train, _warm(train), _embeddings(), np.asarray(items), per_item, neighbours)


def test_the_fixture_neighbours_are_5_then_2():
    train = _train()
    assert nearest_warm(_embeddings(), np.array([9, 10, 11]), _warm(train), 2).tolist() == [[5, 2]] * 3


def test_extended_histories_append_truncate_and_keep_left_padding():
    hist = np.array([[P, P, P], [P, P, 1], [6, 7, 8]])
    assert extended_histories(hist, np.array([4, 5, 9])).tolist() == [[P, P, 4], [P, 1, 5], [7, 8, 9]]


def test_successor_histories_end_with_the_neighbour_and_prefer_non_training_keys():
    req = _successor([9], per_item=3)
    # round robin 5, 2, 5; within 5: the non-training-key occurrences (samples 10 then 2, most recent first)
    assert req.sources.tolist() == [10, 5, 2]
    assert req.items.tolist() == [9, 9, 9]
    assert req.histories.tolist() == [[7, 8, 5], [3, 5, 2], [1, 2, 5]]  # [6,7,8]+5 truncated to the last 3


def test_successor_requests_are_the_extended_source_samples():
    train = _train()
    req = _successor([9], per_item=10)  # more than there are: each occurrence once
    assert req.sources.tolist() == [10, 5, 2, 1, 4]  # 5's training key (sample 4) after its non-keys
    assert np.array_equal(req.histories, extended_histories(train.histories[req.sources], train.targets[req.sources]))
    assert req.histories.tolist()[-2:] == [[P, 1, 2], [P, 3, 5]]  # left-padded


def test_successor_hand_out_gives_different_items_different_histories_then_reuses():
    req = _successor([9, 10, 11], per_item=2)
    assert req.items.tolist() == [9, 9, 10, 10, 11, 11]
    # 9 takes 5's and 2's first occurrences, 10 the next ones, 11 the last of 5 and (2 exhausted) reuses 2's first
    assert req.sources.tolist() == [10, 5, 2, 1, 4, 5]
    assert len({tuple(h) for h in req.histories[:5]}) == 5


def test_successor_counts_one_occurrence_per_extended_history_and_keeps_empty_histories():
    """u3 repeats u0's 1 2 5 later: [1,2,5] is taught once, from the most recent occurrence (u3's). u4 has the
    single training item 5: its empty history gives [_,_,5], no training history."""
    base = _train()
    extra = CaseSet(np.array([3, 3, 3, 4]), np.array([[P, P, P], [P, P, 1], [P, 1, 2], [P, P, P]]),
                    np.array([1, 2, 5, 5]), np.array([20.0, 21.0, 22.0, 23.0]))
    train = CaseSet(*(np.concatenate([getattr(base, f), getattr(extra, f)])
                      for f in ("users", "histories", "targets", "timestamps")))
    req = successor_histories(train, _warm(train), _embeddings(), np.array([9]), per_item=10, neighbours=1)
    # 5: non-keys most recent first: u4 (14: [_,_,5]), u3 (13: [1,2,5]; u0's sample 2 is the same history),
    # u2 (10); then the key (4)
    assert req.sources.tolist() == [14, 13, 10, 4]
    assert req.histories.tolist() == [[P, P, 5], [1, 2, 5], [7, 8, 5], [P, 3, 5]]


def test_successor_differs_from_pseudo_which_copies_training_keys():
    train = _train()
    pseudo = pseudo_histories(train, _warm(train), _embeddings(), np.array([9]), 3, 2)
    succ = _successor([9], per_item=3)
    train_ids, pseudo_ids, succ_ids = row_ids(train.histories, pseudo.histories, succ.histories)
    assert np.isin(pseudo_ids, train_ids).all()  # every pseudo history is a training history (preceding 5 or 2)
    assert not np.isin(succ_ids[[0, 2]], train_ids).any()  # the successor ones from users' last items are not


def test_successor_on_a_real_split_is_consistent():
    split = make_split(random_dataset(), SplitConfig(protocol="time"))
    emb = np.random.default_rng(3).normal(size=(split.n_items, 8)).astype(np.float32)
    cold = split.cold_items()
    req = successor_histories(split.train, split.warm, emb, cold, per_item=3, neighbours=4)
    near = dict(zip(cold.tolist(), nearest_warm(emb, cold, split.warm, 4).tolist()))
    assert len(req) == 3 * len(cold)
    train = split.train
    assert np.array_equal(req.histories, extended_histories(train.histories[req.sources], train.targets[req.sources]))
    for hist, item in zip(req.histories, req.items):
        assert hist[-1] in near[item]
    # a source that is its user's last training sample gives a history no training sample has
    last = np.r_[train.users[1:] != train.users[:-1], True]
    train_ids, req_ids = row_ids(train.histories, req.histories)
    assert last[req.sources].any()
    assert not np.isin(req_ids[last[req.sources]], train_ids).any()


def test_row_ids_are_exact_across_arrays():
    a = np.array([[1, 2], [P, 3], [1, 2]])
    b = np.array([[P, 3], [4, 4]])
    ia, ib = row_ids(a, b)
    assert ia[0] == ia[2] and ia[1] == ib[0] and len({ia[0], ia[1], ib[1]}) == 3
    (empty,) = row_ids(np.zeros((3, 0), np.int64))
    assert empty.tolist() == [0, 0, 0]


def test_successor_is_a_configurable_source_built_by_build_requests():
    from genrecedit.runs.edit import build_requests

    cfg = load_config(None, ["knowledge.source=successor", "knowledge.histories_per_item=2",
                             "knowledge.neighbours=2"])
    assert cfg.knowledge.source == "successor"
    with pytest.raises(ConfigError, match="successor"):
        load_config(None, ["knowledge.source=successors"])
    train = _train()
    split = SimpleNamespace(train=train, warm=_warm(train))
    run = SimpleNamespace(prepared=SimpleNamespace(split=split, embeddings=_embeddings()), config=cfg)
    req = build_requests(run, np.array([9, 10]))
    expected = _successor([9, 10], per_item=2)
    assert np.array_equal(req.histories, expected.histories) and np.array_equal(req.sources, expected.sources)
