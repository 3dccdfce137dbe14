"""Exposure: how many users a new item reaches. A new item shown to everyone fails as much as one shown to no one."""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from genrecedit.errors import ConfigError


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


@dataclass
class ExposureCap:
    """A served bound on exposure: no new item enters more than ``share`` of the top-``k`` lists served since it
    was first a candidate for one, counted in the order the lists are served.

    Selection holds ``max_item_share`` on validation's histories; the lists served later come from another mix
    (more and more histories end with a new item, and those pull their sequels and variants into many lists), so
    an item within the bound on validation can exceed it in service. The cap holds the bound as lists are served:
    an item is admitted to a list while it has entered fewer than ``share × max(lists, warmup)`` of the lists since
    its first candidacy (this one included); a blocked item leaves the list and the next entry moves up. After
    ``warmup`` lists no item's share exceeds ``share``; in the first ``warmup`` lists an item may take up to
    ``share × warmup`` of them. It reads only what a list is made of, never whether a user took the item.
    """

    share: float
    warmup: int = 100
    k: int = 10  # the list length exposure is counted in (``exposure``'s top-k)
    served: int = 0  # lists served so far
    counts: dict = field(default_factory=dict)  # item key -> lists it entered
    since: dict = field(default_factory=dict)  # item key -> ``served`` when it was first a candidate
    blocked: int = 0  # entries the cap took out of a list
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1:
            raise ConfigError(f"exposure cap share must be in (0, 1], got {self.share}")
        if self.warmup < 1 or self.k < 1:
            raise ConfigError(f"exposure cap warmup ({self.warmup}) and k ({self.k}) must be ≥ 1")

    def _allows(self, key) -> bool:
        lists = self.served - self.since.setdefault(key, self.served) + 1
        return self.counts.get(key, 0) + 1 <= self.share * max(lists, self.warmup)

    def select(self, keys: np.ndarray, items: np.ndarray, is_new: np.ndarray, k: int,
               order: np.ndarray | None = None, key: Callable[[int], Hashable] | None = None,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` of each row of ``keys`` [n, m] (ranking keys, -inf: not a candidate) over ``items`` [n, m],
        served in ``order`` (default: row order), with the new entries (``is_new`` [n, m]) the cap blocks taken
        out: -> items [n, k] (-1: empty) and their keys [n, k], best first. ``key``: an item's identity across
        calls (default: its index), so that a service whose catalog indices change counts the same item on.
        ``exclude`` [n, e] (item indices, -1: none): items a row may not serve (a user's seen items), taken out
        before anything is counted, so an entry that moves up in their place is counted too."""
        key = key or int
        keys = np.array(keys, np.float64)
        if exclude is not None and np.size(exclude):
            ex = np.asarray(exclude, np.int64)
            keys[((np.asarray(items)[:, :, None] == ex[:, None, :]) & (ex[:, None, :] >= 0)).any(2)] = -np.inf
        pick = np.argsort(-keys, axis=1, kind="stable")[:, :k]
        live = is_new & np.isfinite(keys)
        head = min(self.k, k)
        with self._lock:
            for r in range(len(keys)) if order is None else order:
                while True:
                    cols = [c for c in pick[r, :head] if live[r, c]]
                    shut = [c for c in cols if not self._allows(key(items[r, c]))]
                    if not shut:
                        break
                    keys[r, shut] = -np.inf
                    live[r, shut] = False
                    self.blocked += len(shut)
                    pick[r] = np.argsort(-keys[r], kind="stable")[:k]
                for c in cols:
                    name = key(items[r, c])
                    self.counts[name] = self.counts.get(name, 0) + 1
                self.served += 1
        best = np.take_along_axis(keys, pick, 1)
        return np.where(np.isfinite(best), np.take_along_axis(items, pick, 1), -1), best

    def state(self) -> dict:
        """What the cap has counted: lists served, entries blocked, and the largest share any item holds of the
        lists since its first candidacy."""
        with self._lock:
            shares = [c / max(self.served - self.since.get(i, 0), 1) for i, c in self.counts.items()]
            return {"share": self.share, "warmup": self.warmup, "k": self.k, "served": self.served,
                    "blocked": self.blocked, "max_share_since_candidacy": max(shares, default=0.0)}
