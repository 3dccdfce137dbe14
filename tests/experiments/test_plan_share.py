"""bench/plan_share.py: the warm cases it reads, in time order, and where the planned share comes from."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from genrecedit.data.dataset import PAD_ITEM, CaseSet

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_warm_novel_reads_warm_cases_in_time_order_and_their_last_item(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import plan_share as module

    new = np.array([7, 9])
    histories = np.array([[PAD_ITEM, 1, 7],   # ends with a new item, target warm
                          [1, 7, 2],          # a new item earlier, ends warm
                          [PAD_ITEM, 2, 9],   # ends new, but its target is new: a cold case, not read
                          [PAD_ITEM, PAD_ITEM, 9]])
    cases = CaseSet(np.zeros(4, np.int64), histories, np.array([3, 4, 7, 5]), np.array([30.0, 10.0, 20.0, 40.0]))
    times, novel = module.warm_novel(cases, new)
    assert times.tolist() == [10.0, 30.0, 40.0]
    assert novel.tolist() == [False, True, True]
    assert module.latest(np.array([False] * 8 + [True, True])) == 1.0  # the latest fifth
