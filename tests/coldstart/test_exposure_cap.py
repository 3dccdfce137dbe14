"""The exposure cap: as lists are served, no new item enters more than its share of them (after the warm-up), a
blocked item leaves the list and the next entry moves up, and the count follows the serving order and the item's
identity, never a user's response."""
from __future__ import annotations

import numpy as np
import pytest

from genrecedit.coldstart.exposure import ExposureCap, exposure
from genrecedit.coldstart.insertion import CalibratedInsertion, InsertionConfig
from genrecedit.errors import ConfigError
from test_insertion import _model, _proposals


def _rows(n: int):
    """n identical rows: beam items 1, 2, 3 (log-odds -1, -2, -3), new item 9 on top (0), new item 8 under it."""
    keys = np.tile([-1.0, -2.0, -3.0, 0.0, -1.5], (n, 1))
    items = np.tile([1, 2, 3, 9, 8], (n, 1))
    is_new = np.tile([False, False, False, True, True], (n, 1))
    return keys, items, is_new


def test_no_item_exceeds_its_share_of_the_lists_served_after_the_warmup():
    keys, items, is_new = _rows(400)
    cap = ExposureCap(0.1, warmup=20, k=3)
    top, best = cap.select(keys, items, is_new, 4)
    for item in (9, 8):
        entered = np.cumsum((top[:, :3] == item).any(1))
        served = np.arange(1, len(top) + 1)
        assert (entered <= 0.1 * np.maximum(served, 20)).all()  # at every point of the serving order
        assert entered[-1] == 40  # and the cap gives the item all the share it allows
    assert exposure(top, np.array([8, 9]), 3)["max_item_share"] == pytest.approx(0.1)
    # a blocked item leaves the list: the next entry moves up, the beam's order stays
    blocked = ~(top == 9).any(1) & ~(top == 8).any(1)
    assert blocked.any() and (top[blocked] == [1, 2, 3, -1]).all() and np.isneginf(best[blocked, 3]).all()
    first = np.flatnonzero((top == 9).any(1))[0]
    assert top[first].tolist() == [9, 1, 8, 2]  # the first list: both new items inside the warm-up's share
    assert cap.state()["served"] == 400 and cap.state()["blocked"] == 2 * 400 - 80


def test_the_cap_counts_in_the_serving_order_and_by_the_items_identity():
    keys, items, is_new = _rows(10)
    order = np.arange(10)[::-1]
    top, _ = ExposureCap(0.2, warmup=10, k=3).select(keys, items, is_new, 3, order=order)
    assert [bool((row == 9).any()) for row in top] == [False] * 8 + [True, True]  # the last rows are served first
    cap = ExposureCap(0.2, warmup=10, k=3)
    cap.select(keys[:5], items[:5], is_new[:5], 3, key=lambda i: f"id{i}")
    later = np.where(items[:5] == 9, 4, items[:5])  # item "id9" now at another index, as after a catalog change
    top, _ = cap.select(keys[:5], later, is_new[:5], 3, key=lambda i: f"id{9 if i == 4 else i}")
    assert not (top == 4).any()  # its two lists of the first call already fill the 20 % of 10


def test_excluded_items_leave_the_list_before_the_cap_counts_it():
    """A row's excluded item (a user's seen item) is out before anything is counted: it takes no share, and the
    entry that moves up into the head in its place is the one counted (and capped)."""
    keys, items, is_new = _rows(20)
    exclude = np.full((20, 2), -1)
    exclude[::2, 0] = 9  # even rows: new item 9 was seen
    cap = ExposureCap(0.5, warmup=20, k=2)  # up to 10 of the first 20 lists per item
    top, _ = cap.select(keys, items, is_new, 3, exclude=exclude)
    assert not (top[::2] == 9).any() and (top[1::2, 0] == 9).all()  # out where excluded, first elsewhere
    assert (top[::2] == [1, 8, 2]).all()  # item 8 moves up into the 2-item head, and is counted
    assert cap.counts == {9: 10, 8: 10} and cap.blocked == 0
    plain = ExposureCap(0.5, warmup=20, k=2)
    top, _ = plain.select(keys, items, is_new, 3, exclude=np.full((20, 0), -1))
    assert (top[:10, 0] == 9).all() and not (top[10:] == 9).any() and plain.blocked == 10  # held to its 10 lists


def test_only_the_counted_head_of_a_list_is_capped_and_a_full_share_changes_nothing():
    keys, items, is_new = _rows(50)
    keys[:, 3] = -2.5  # item 9 at rank 3 of 4: outside a 2-item head
    cap = ExposureCap(0.05, warmup=1, k=2)
    top, _ = cap.select(keys, items, is_new, 4)
    assert (top == 9).any(1).all() and not (top[:, :2] == 9).any()  # never in the head: never counted or blocked
    assert 9 not in cap.counts and cap.counts[8] == 2  # item 8 is: lists 20 and 40 (5 % of them)
    model = _model(1.0)
    p = _proposals([[7, 8]] * 6, [[-1.5, -9.0]] * 6, [[1, 2, 3]] * 6, [[-1.0, -3.0, -2.0]] * 6)
    plain = model.rank(p, 4)
    capped = model.rank(p, 4, cap=ExposureCap(1.0), new_items=np.array([7, 8]))
    np.testing.assert_array_equal(plain[0], capped[0])
    np.testing.assert_array_equal(plain[1], capped[1])


def test_a_new_item_the_beam_holds_counts_as_new_too():
    model = _model(1.0)
    p = _proposals([[7]] * 4, [[-9.0]] * 4, [[5, 2, 3]] * 4, [[-1.0, -3.0, -4.0]] * 4)
    top, _ = model.rank(p, 3, cap=ExposureCap(0.5, warmup=1, k=3), new_items=np.array([5, 7]))
    assert [bool((row == 5).any()) for row in top] == [False, True, False, True]  # 1st list: 1 > 0.5 · 1
    top, _ = model.rank(p, 3, cap=ExposureCap(0.5, warmup=1, k=3))  # without the new items: the beam's own
    assert (top[:, 0] == 5).all()


def test_bad_caps_are_refused():
    for share in (0.0, 1.5):
        with pytest.raises(ConfigError, match="share"):
            ExposureCap(share)
    with pytest.raises(ConfigError, match="warmup"):
        ExposureCap(0.1, warmup=0)
    with pytest.raises(ConfigError, match="insertion.cap"):
        InsertionConfig(cap=0.0)
    assert InsertionConfig().exposure_cap() is None and InsertionConfig(cap=0.05).exposure_cap().share == 0.05
    data = _model(1.0).to_dict()
    data["config"].pop("cap")  # a fitted insertion saved before the cap existed loads uncapped
    assert CalibratedInsertion.of(data).cfg.cap is None
