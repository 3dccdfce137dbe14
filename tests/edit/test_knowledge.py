"""Knowledge preparation: which items are edited, and where their pseudo-histories come from."""
from __future__ import annotations

import numpy as np

from genrecedit.data.dataset import PAD_ITEM
from genrecedit.data.protocols import SplitConfig, make_split
from genrecedit.edit.knowledge import case_histories, nearest_warm, pseudo_histories
from knowledge_data import random_dataset


def test_cold_items_are_exactly_those_absent_from_training():
    split = make_split(random_dataset(), SplitConfig(protocol="time"))
    in_train = np.zeros(split.n_items, bool)
    for seq in split.train_sequences:
        in_train[seq] = True
    assert set(split.cold_items().tolist()) == set(np.flatnonzero(~in_train).tolist())


def test_pseudo_histories_copy_neighbour_training_histories():
    split = make_split(random_dataset(), SplitConfig(protocol="time"))
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(split.n_items, 8)).astype(np.float32)
    cold = split.cold_items()
    req = pseudo_histories(split.train, split.warm, emb, cold, per_item=3, neighbours=4)
    near = nearest_warm(emb, cold, split.warm, 4)
    neighbours_of = {c: set(n.tolist()) for c, n in zip(cold, near)}
    assert len(req) > 0
    for hist, item, src in zip(req.histories, req.items, req.sources):
        assert src >= 0
        assert np.array_equal(hist, split.train.histories[src])  # a verbatim training history
        assert split.train.targets[src] in neighbours_of[item]  # that preceded a similar warm item
        assert (hist != PAD_ITEM).any()  # never an empty history
    counts = np.bincount(req.items, minlength=split.n_items)[cold]
    assert counts.max() <= 3
    # most similar neighbour first
    first = {}
    for item, src in zip(req.items, req.sources):
        first.setdefault(item, split.train.targets[src])
    for c, n in zip(cold, near):
        if c in first:
            assert first[c] == n[0] or (split.train.targets == n[0]).sum() == 0


def test_nearest_warm_orders_by_cosine():
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.6, 0.8], [1, 0.05]], np.float32)
    warm = np.array([False, True, True, True, True])
    near = nearest_warm(emb, np.array([0]), warm, 3)
    assert near.tolist() == [[4, 1, 3]]


def test_case_histories_take_most_recent_per_item():
    split = make_split(random_dataset(seed=2), SplitConfig(protocol="time"))
    items = np.unique(split.valid.targets)[:3]
    req = case_histories(split.valid, items, per_item=1)
    assert sorted(req.items.tolist()) == sorted(items.tolist())
    for item, hist in zip(req.items, req.histories):
        ts = split.valid.timestamps[split.valid.targets == item]
        idx = np.flatnonzero((split.valid.targets == item) & (split.valid.timestamps == ts.max()))
        assert any(np.array_equal(hist, split.valid.histories[i]) for i in idx)


def test_hand_out_goes_round_robin_most_recent_first_and_reuses_only_when_all_are_taken():
    from genrecedit.data.dataset import CaseSet
    from genrecedit.edit.knowledge import _hand_out, _occurrences_by_target

    # samples: 0 and 1 teach warm item 0 (1 is the more recent), 2 teaches warm item 1
    train = CaseSet(np.zeros(3, np.int64), np.array([[-1, 5], [-1, 6], [-1, 7]]), np.array([0, 0, 1]),
                    np.array([1.0, 5.0, 3.0]))
    order, starts, counts = _occurrences_by_target(train, 2, np.arange(3))
    assert order[starts[0]:starts[0] + counts[0]].tolist() == [1, 0]  # most recent first
    near = np.array([[0, 1], [0, 1]])  # both cold items (10, 11): warm 0 most similar, then warm 1
    owner, source = _hand_out(np.array([10, 11]), near, order, starts, counts, per_item=2)
    # 10 takes warm 0's most recent, then warm 1's only sample; 11 takes warm 0's next one (not the one 10 took)
    # and reuses warm 1's sample, the only one it has
    assert owner.tolist() == [10, 10, 11, 11] and source.tolist() == [1, 2, 0, 2]
