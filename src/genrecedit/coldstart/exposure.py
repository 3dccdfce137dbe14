"""Exposure: how many users a new item reaches. A new item shown to everyone fails as much as one shown to no one."""
from __future__ import annotations

import numpy as np


def exposure(topk: np.ndarray, new_items: np.ndarray, k: int = 10) -> dict:
    """[n, K] ranked lists (item indices, -1 empty) and the new items [m] -> over the top-``k`` of every list:

    new_item_slot_share: share of all top-k slots that hold a new item; max_item_share: the largest share of lists
    any one new item enters (and ``max_item``, its index); reached_items / unreached_items: new items in at least
    one / in no top-k list; n_new_items; n_lists; reached_share_quantiles: the median, 90th and 99th percentile of
    the share of lists each reached new item enters.
    """
    top = np.asarray(topk)[:, :k]
    new_items = np.unique(np.asarray(new_items, np.int64))
    n = top.shape[0]
    valid = top >= 0
    is_new = valid & np.isin(top, new_items)
    counts = np.bincount(top[is_new], minlength=int(new_items.max()) + 1 if len(new_items) else 0)
    per_item = counts[new_items] if len(new_items) else np.zeros(0, np.int64)  # a list holds an item at most once
    best = int(np.argmax(per_item)) if len(per_item) else -1
    shares = per_item / max(n, 1)
    reached = shares[shares > 0]
    return {"new_item_slot_share": float(is_new.sum() / max(n * k, 1)),
            "max_item_share": float(per_item[best] / n) if n and best >= 0 else 0.0,
            "max_item": int(new_items[best]) if best >= 0 and per_item[best] > 0 else None,
            "reached_items": int((per_item > 0).sum()), "unreached_items": int((per_item == 0).sum()),
            "n_new_items": int(len(new_items)), "n_lists": int(n), "k": k,
            # per item: how its share of lists is spread over the items that reach anyone
            "reached_share_quantiles": {f"p{q}": float(np.percentile(reached, q)) if len(reached) else 0.0
                                        for q in (50, 90, 99)}}
