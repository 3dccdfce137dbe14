"""Protocols: no temporal leak, cold definition, filters, histories, LOO, holdout, determinism, summaries."""
from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrecedit.data.dataset import PAD_ITEM, CaseSet, RecDataset, Split, ends_with
from genrecedit.data.protocols import (SplitConfig, format_split_summary, make_split, save_split_summary, split_summary,
                                      unseen_user_valid)
from genrecedit.data.readers import load_dataset
from genrecedit.errors import ConfigError

P = PAD_ITEM


def make_ds(rows: list[tuple[str, str, float]], extra_items: tuple[str, ...] = ()) -> RecDataset:
    """A dataset from (user, item, timestamp) rows, sorted like a reader's output."""
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype({"timestamp": "float64"})
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    ids = sorted(set(inter["item_id"]) | set(extra_items))
    items = pd.DataFrame({"text": [f"item {i}" for i in ids]}, index=pd.Index(ids, name="item_id"))
    return RecDataset("toy", inter, items)


def reference_split(ds: RecDataset, cfg: SplitConfig) -> dict[str, list[tuple]]:
    """Brute force, one case at a time: {role: [(user_id, history item ids, target id, ts)]}."""
    seqs: dict[str, list[tuple[str, float]]] = {}
    for u, i, t in ds.interactions.itertuples(index=False, name=None):
        seqs.setdefault(u, []).append((i, t))
    roles: dict[str, list[str]] = {}
    if cfg.protocol == "loo":
        for u, seq in seqs.items():
            n = len(seq)
            roles[u] = ["train"] * n if n < 3 else ["train"] * (n - 2) + ["valid", "test"]
    else:
        ts = ds.interactions["timestamp"].to_numpy()
        t1, t2 = np.quantile(ts, cfg.valid_quantile), np.quantile(ts, cfg.test_quantile)
        for u, seq in seqs.items():
            roles[u] = ["train" if t < t1 else "valid" if t < t2 else "test" for _, t in seq]
        if cfg.filter_test_users:
            roles = {u: r for u, r in roles.items() if "test" in r}
    if cfg.protocol == "holdout":
        catalog = sorted(ds.items.index)
        train_items = sorted({catalog.index(i) for u in roles for (i, _), r in zip(seqs[u], roles[u]) if r == "train"})
        n = int(round(cfg.holdout_fraction * len(train_items)))
        held = {catalog[k] for k in np.random.default_rng(cfg.seed).choice(np.array(train_items, np.int64), n, False)}
        kept_roles = ("test",) if cfg.holdout_drops_valid else ("test", "valid")
        roles = {u: [None if (i in held and r not in kept_roles) else r for (i, _), r in zip(seqs[u], rs)]
                 for u, rs in roles.items()}
    out: dict[str, list[tuple]] = {"train": [], "valid": [], "test": []}
    for u in sorted(roles):
        kept = [(i, t, r) for (i, t), r in zip(seqs[u], roles[u]) if r is not None]
        for k, (i, t, r) in enumerate(kept):
            out[r].append((u, tuple(x for x, _, _ in kept[:k][-cfg.max_history:]), i, t))
    return out


def as_tuples(split: Split, cases: CaseSet) -> list[tuple]:
    return [
        (split.user_ids[u], tuple(split.item_ids[i] for i in h if i != P), split.item_ids[t], float(ts))
        for u, h, t, ts in zip(cases.users, cases.histories, cases.targets, cases.timestamps)
    ]


def assert_matches_reference(ds: RecDataset, cfg: SplitConfig) -> Split:
    split = make_split(ds, cfg)
    ref = reference_split(ds, cfg)
    for role in ("train", "valid", "test"):
        assert as_tuples(split, getattr(split, role)) == ref[role], role
    return split


# ---- a dataset whose split is known by hand -------------------------------------------------------------------
# 14 timestamps; q(0.65) = 7.45, q(0.73) = 8.49: train t ≤ 7, valid t = 8, test t = 9
KNOWN = make_ds([
    ("a", "i1", 0), ("a", "i2", 1), ("a", "i3", 8), ("a", "i4", 9),
    ("b", "i2", 2), ("b", "i5", 9),
    ("c", "i6", 3), ("c", "i1", 4), ("c", "i3", 5),  # no test interaction: filtered out, i6 becomes cold
    ("d", "i7", 9),                                   # only a test interaction: empty history
    ("e", "i1", 6), ("e", "i2", 7), ("e", "i8", 7), ("e", "i1", 9),
], extra_items=("i9",))
KNOWN_CFG = SplitConfig(valid_quantile=0.65, test_quantile=0.73, max_history=3)


def test_time_split_known_truth():
    split = make_split(KNOWN, KNOWN_CFG)
    assert split.user_ids == ["a", "b", "d", "e"]
    assert split.item_ids == [f"i{k}" for k in range(1, 10)]
    assert as_tuples(split, split.train) == [
        ("a", (), "i1", 0.0), ("a", ("i1",), "i2", 1.0), ("b", (), "i2", 2.0),
        ("e", (), "i1", 6.0), ("e", ("i1",), "i2", 7.0), ("e", ("i1", "i2"), "i8", 7.0),  # tie: file order
    ]
    assert as_tuples(split, split.valid) == [("a", ("i1", "i2"), "i3", 8.0)]
    assert as_tuples(split, split.test) == [
        ("a", ("i1", "i2", "i3"), "i4", 9.0), ("b", ("i2",), "i5", 9.0), ("d", (), "i7", 9.0),
        ("e", ("i1", "i2", "i8"), "i1", 9.0),
    ]
    assert split.test.histories[2].tolist() == [P, P, P]
    assert split.test.histories[1].tolist() == [P, P, 1]  # left-padded, most recent last
    assert [s.tolist() for s in split.train_sequences] == [[0, 1], [1], [], [0, 1, 7]]
    assert [split.item_ids[i] for i in split.cold_items()] == ["i3", "i4", "i5", "i6", "i7", "i9"]
    assert split.is_cold(split.test).tolist() == [True, True, True, False]
    # i4, i5, i7 first appear at t = 9; i3 and i6 appear earlier but only for c (filtered out); i9 never
    assert split.info["cold_items"] == {"new_in_time": 3, "filtered_out_users_only": 2, "never_interacted": 1}


def test_filter_test_users_off_keeps_everyone():
    split = make_split(KNOWN, replace(KNOWN_CFG, filter_test_users=False))
    assert split.user_ids == ["a", "b", "c", "d", "e"]
    assert "i6" not in [split.item_ids[i] for i in split.cold_items()]


def test_history_truncation_and_left_padding():
    rows = [("u", f"i{k:02d}", float(k)) for k in range(30)] + [("v", "i00", 29.0)]
    split = assert_matches_reference(make_ds(rows), SplitConfig(max_history=5, valid_quantile=0.5))
    train = split.train
    assert train.histories.shape == (len(train), 5)
    assert train.histories[0].tolist() == [P] * 5
    assert train.histories[2].tolist() == [P, P, P, 0, 1]
    assert train.histories[10].tolist() == [5, 6, 7, 8, 9]
    assert (train.history_lengths() == np.minimum(np.arange(len(train)), 5)).all()


def test_loo_known_truth():
    ds = make_ds([("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("a", "w", 4), ("b", "x", 1), ("b", "y", 5)])
    split = assert_matches_reference(ds, SplitConfig(protocol="loo", max_history=2))
    assert split.user_ids == ["a", "b"]
    assert as_tuples(split, split.valid) == [("a", ("x", "y"), "z", 3.0)]
    assert as_tuples(split, split.test) == [("a", ("y", "z"), "w", 4.0)]
    assert [len(s) for s in split.train_sequences] == [2, 2]  # b is too short: all train
    assert "loo" == split.protocol and "t1" not in split.info
    assert split.info["cold_items"] == {"only_in_valid_or_test": 2, "never_interacted": 0}


def random_ds(seed: int, n_users: int = 40, n_items: int = 30, n: int = 400) -> RecDataset:
    rng = np.random.default_rng(seed)
    rows = [(f"u{rng.integers(n_users)}", f"i{rng.integers(n_items)}", float(rng.integers(0, 50))) for _ in range(n)]
    return make_ds(rows)


def test_holdout_removes_items_from_train_valid_and_histories():
    ds = random_ds(1)
    cfg = SplitConfig(protocol="holdout", holdout_fraction=0.4, max_history=50)
    split = assert_matches_reference(ds, cfg)
    base = make_split(ds, SplitConfig(max_history=50))
    held = np.flatnonzero(np.isin(split.item_ids, split.info["holdout_items"]))
    assert len(held) == split.info["n_holdout_items"] == round(0.4 * base.warm.sum()) > 0
    assert base.warm[held].all() and not split.warm[held].any()
    assert not np.isin(split.valid.targets, held).any()
    for cases in (split.train, split.valid):
        assert not np.isin(cases.histories, held).any()
    # test is unchanged (same cases, same order); only histories lose the deleted train/valid interactions
    assert np.array_equal(split.test.targets, base.test.targets)
    assert np.array_equal(split.test.timestamps, base.test.timestamps)
    assert [split.user_ids[u] for u in split.test.users] == [base.user_ids[u] for u in base.test.users]


def test_holdout_launch_during_validation_keeps_the_valid_interactions():
    ds = random_ds(1)
    cfg = SplitConfig(protocol="holdout", holdout_fraction=0.4, max_history=50, holdout_drops_valid=False)
    split = assert_matches_reference(ds, cfg)
    dropped = make_split(ds, SplitConfig(protocol="holdout", holdout_fraction=0.4, max_history=50))
    held = np.flatnonzero(np.isin(split.item_ids, split.info["holdout_items"]))
    assert split.info["holdout_items"] == dropped.info["holdout_items"]
    assert not split.warm[held].any() and not np.isin(split.train.targets, held).any()
    assert np.isin(split.valid.targets, held).any()  # the observed feedback of the launched items
    assert len(split.valid) > len(dropped.valid)


@pytest.mark.parametrize("protocol", ["time", "loo", "holdout"])
def test_deterministic(protocol):
    ds = random_ds(2)
    a, b = make_split(ds, SplitConfig(protocol=protocol)), make_split(ds, SplitConfig(protocol=protocol))
    for role in ("train", "valid", "test"):
        for field in ("users", "histories", "targets", "timestamps"):
            assert np.array_equal(getattr(getattr(a, role), field), getattr(getattr(b, role), field))
    assert np.array_equal(a.warm, b.warm) and a.item_ids == b.item_ids and a.user_ids == b.user_ids
    assert a.info == b.info


def test_holdout_seed_changes_held_items():
    ds = random_ds(3)
    a = make_split(ds, SplitConfig(protocol="holdout", seed=0)).info["holdout_items"]
    b = make_split(ds, SplitConfig(protocol="holdout", seed=1)).info["holdout_items"]
    assert a != b


def check_no_leak(ds: RecDataset, split: Split) -> None:
    """Cold ⟺ never a train target; every history item is an interaction of that user at or before the target."""
    assert np.array_equal(split.is_cold(split.test), ~np.isin(split.test.targets, split.train.targets))
    times: dict[tuple[str, str], float] = {}
    for u, i, t in ds.interactions.itertuples(index=False, name=None):
        times[(u, i)] = min(t, times.get((u, i), np.inf))
    for cases in (split.train, split.valid, split.test):
        for u, h, ts in zip(cases.users, cases.histories, cases.timestamps):
            for item in h[h != P]:
                assert times[(split.user_ids[u], split.item_ids[item])] <= ts


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7), st.integers(0, 12)), min_size=1, max_size=60),
    protocol=st.sampled_from(["time", "loo", "holdout"]),
    max_history=st.integers(1, 6),
    filter_users=st.booleans(),
)
def test_property_matches_brute_force_and_never_leaks(rows, protocol, max_history, filter_users):
    ds = make_ds([(f"u{u}", f"i{i}", float(t)) for u, i, t in rows])
    cfg = SplitConfig(protocol=protocol, max_history=max_history, filter_test_users=filter_users, holdout_fraction=0.5)
    split = assert_matches_reference(ds, cfg)
    check_no_leak(ds, split)
    if protocol != "loo":
        tr, va, te = split.train.timestamps, split.valid.timestamps, split.test.timestamps
        assert all(a.max() < b.min() for a, b in ((tr, va), (va, te), (tr, te)) if a.size and b.size)
    if len(split.train):  # every user's first training sample is kept, with an empty history
        firsts = np.r_[0, np.flatnonzero(np.diff(split.train.users)) + 1]
        assert (split.train.history_lengths()[firsts] == 0).all()
        assert (split.train.history_lengths() == 0).sum() == firsts.size


def test_summary_numbers_and_json(tmp_path):
    split = make_split(KNOWN, KNOWN_CFG)
    summary = split_summary(split)
    assert summary["users"] == 4
    assert summary["items"] == {"catalog": 9, "warm": 3, "cold": 6}
    assert summary["test"]["cases"] == 4 and summary["test"]["cold"] == 3
    assert summary["test"]["cold_share"] == 0.75 and summary["test"]["empty_history_share"] == 0.25
    assert summary["train"]["empty_history"] == 3  # every kept user's first training sample
    assert summary["cold_items"]["new_in_time"] == 3
    path = tmp_path / "out" / "split.json"
    save_split_summary(summary, path)
    assert json.loads(path.read_text()) == summary
    table = format_split_summary(summary)
    assert "new in time" in table and "test" in table


def test_config_validation():
    with pytest.raises(ConfigError):
        SplitConfig(protocol="random")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        SplitConfig(valid_quantile=0.9, test_quantile=0.8)
    with pytest.raises(ConfigError):
        SplitConfig(max_history=0)


@pytest.mark.slow
def test_real_game_time_split(game_dir):
    start = time.perf_counter()
    ds = load_dataset(str(game_dir), data_root=None, cache_dir=game_dir)
    split = make_split(ds, SplitConfig())
    elapsed = time.perf_counter() - start
    assert len(ds.interactions) == 453_637 and len(ds.items) == 16_874
    assert split.n_items == 16_874
    assert split.train.timestamps.max() < split.info["t1"] <= split.valid.timestamps.min()
    assert split.valid.timestamps.max() < split.info["t2"] <= split.test.timestamps.min()
    assert set(np.unique(split.test.users)) == set(range(len(split.user_ids)))  # every kept user has a test case
    summary = split_summary(split)
    assert 0.02 < summary["test"]["empty_history_share"] < 0.07  # docs/method.md §1: ≈ 4 %
    cold = summary["cold_items"]
    assert cold["new_in_time"] + cold["filtered_out_users_only"] + cold["never_interacted"] == summary["items"]["cold"]
    assert elapsed < 10


def test_ends_with_reads_the_last_slot_only_and_never_padding():
    histories = np.array([[PAD_ITEM, 3, 7], [7, 3, 1], [PAD_ITEM, PAD_ITEM, PAD_ITEM], [1, 2, 3]])
    assert ends_with(histories, np.array([7, 3])).tolist() == [True, False, False, True]
    assert ends_with(histories, np.array([PAD_ITEM])).tolist() == [False] * 4  # padding is no item
    assert ends_with(histories, np.array([], dtype=np.int64)).tolist() == [False] * 4


# ---- validation cases of the users the filter left out (unseen_user_valid) -----------------------------------------
# KNOWN plus f (train-period interactions, then two in validation) and g (validation only); neither has a test one
UNSEEN = make_ds(list(KNOWN.interactions.itertuples(index=False, name=None)) + [
    ("f", "i2", 1), ("f", "i6", 2), ("f", "i3", 8), ("f", "i1", 8.2),
    ("g", "i9", 8.1),
], extra_items=("i9",))


def test_unseen_user_valid_known_truth():
    cfg = replace(KNOWN_CFG, valid_quantile=0.6, test_quantile=0.8)  # t1 = 7.8, t2 = 8.52
    split = make_split(UNSEEN, cfg)
    assert split.user_ids == ["a", "b", "d", "e"] and split.info["t1"] < 8 < 8.2 < split.info["t2"] < 9
    extra = unseen_user_valid(UNSEEN, split, cfg)
    named = [(u, tuple(split.item_ids[i] for i in h if i != P), split.item_ids[t], float(ts))
             for u, h, t, ts in zip(extra.users, extra.histories, extra.targets, extra.timestamps)]
    # f's earlier interactions are history only (never a training sample); c has no validation interaction
    assert named == [(4, ("i2", "i6"), "i3", 8.0), (4, ("i2", "i6", "i3"), "i1", 8.2), (5, (), "i9", 8.1)]
    assert not np.isin(split.train.users, extra.users).any()  # numbered past the split's users
    # nothing of theirs was trained on: i6 (c's and f's only) stays cold
    assert not split.warm[split.item_ids.index("i6")]
    # every user in the split, or no filter: nothing to add; loo has no period cutoffs
    for other in (replace(cfg, filter_test_users=False), SplitConfig(protocol="loo", max_history=3)):
        assert len(unseen_user_valid(UNSEEN, make_split(UNSEEN, other), other)) == 0
    with pytest.raises(ConfigError, match="catalog"):
        unseen_user_valid(make_ds(list(UNSEEN.interactions.itertuples(index=False, name=None)),
                                  extra_items=("i9", "j1")), make_split(UNSEEN, cfg), cfg)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7), st.integers(0, 12)), min_size=1, max_size=60),
    protocol=st.sampled_from(["time", "holdout"]),
    drops_valid=st.booleans(),
    max_history=st.integers(1, 6),
)
def test_property_unseen_user_valid_matches_brute_force(rows, protocol, drops_valid, max_history):
    """Per left-out user: every validation-period interaction, its history the user's preceding interactions less
    those the holdout dropped (a held item's before t1, or before t2 when the holdout drops validation too)."""
    ds = make_ds([(f"u{u}", f"i{i}", float(t)) for u, i, t in rows])
    cfg = SplitConfig(protocol=protocol, max_history=max_history, holdout_fraction=0.5,
                      holdout_drops_valid=drops_valid)
    split = make_split(ds, cfg)
    extra = unseen_user_valid(ds, split, cfg)
    t1, t2 = split.info["t1"], split.info["t2"]
    held = set(split.info.get("holdout_items", []))
    cut = t2 if drops_valid else t1
    expected, n = [], len(split.user_ids)
    for u in sorted(set(ds.interactions["user_id"]) - set(split.user_ids)):
        seq = [(i, t) for uu, i, t in ds.interactions.itertuples(index=False, name=None)
               if uu == u and not (i in held and t < cut)]
        assert all(t < t2 for _, t in seq)  # a left-out user has no test interaction
        cases = [(n, tuple(x for x, _ in seq[:k][-max_history:]), i, t) for k, (i, t) in enumerate(seq) if t >= t1]
        expected += cases
        n += bool(cases)
    got = [(int(u), tuple(split.item_ids[i] for i in h if i != P), split.item_ids[t], float(ts))
           for u, h, t, ts in zip(extra.users, extra.histories, extra.targets, extra.timestamps)]
    assert got == expected
