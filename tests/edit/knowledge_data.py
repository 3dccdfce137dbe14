"""A small random interaction set for the knowledge tests (shared by test_knowledge and test_successor)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from genrecedit.data.dataset import RecDataset


def random_dataset(seed=0, n_users=60, n_items=30, per_user=12) -> RecDataset:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        times = np.sort(rng.integers(0, 1000, per_user))
        for t, i in zip(times, rng.integers(0, n_items, per_user)):
            rows.append((f"u{u}", f"i{i}", float(t)))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    items = pd.DataFrame({"text": [f"item {i}" for i in range(n_items + 3)]},
                         index=pd.Index([f"i{i}" for i in range(n_items + 3)], name="item_id"))
    return RecDataset("synthetic", inter, items)
