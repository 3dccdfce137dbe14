"""How many users an added item reaches: after each add, the new snapshot decodes a seeded sample of the run's
validation histories (never test) through the same path as ``/recommend``, and each added item's *exposure* is the
share of those top-k lists that hold it.

An edit can succeed by its own check (the item is recommended for its probe pseudo-history) and still reach no one
on real histories, or take a slot in a large share of every list; both are worth a warning to whoever added it:

* ``active``: served, with an exposure in (0, ``max_item_share``];
* ``active_unreached``: served, but in none of the sampled lists (exposure 0);
* ``active_overexposed``: served, in more than ``max_item_share`` of the sampled lists.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from genrecedit.data.dataset import PAD_ITEM, Split

EXPOSURE_K = 10  # the top-k lists exposure counts (at most the decoding's beam width)
ACTIVE, UNREACHED, OVEREXPOSED = "active", "active_unreached", "active_overexposed"

# (snapshot, histories [n, L], k) -> per history, the ranked catalog indices (``batcher.Ranked``-like: ``.items``)
RankFn = Callable[[object, np.ndarray, int], Sequence]


def validation_histories(split: Split, n: int, seed: int, max_history: int) -> np.ndarray:
    """A seeded sample of ``n`` validation cases' histories (all of them when there are fewer), [m, max_history]
    item indices left-padded with ``PAD_ITEM``, in case order. Reads ``split.valid`` only."""
    histories = np.asarray(split.valid.histories, np.int64)
    if n <= 0 or len(histories) == 0:
        return np.full((0, max_history), PAD_ITEM, np.int64)
    if n < len(histories):
        histories = histories[np.sort(np.random.default_rng(seed).choice(len(histories), n, replace=False))]
    width = histories.shape[1]
    if width >= max_history:  # the model reads the most recent max_history items
        return np.ascontiguousarray(histories[:, width - max_history:])
    pad = np.full((len(histories), max_history - width), PAD_ITEM, np.int64)
    return np.concatenate([pad, histories], axis=1)


def exposure_status(exposure: float | None, max_share: float) -> str:
    """``active``, ``active_unreached`` (exposure 0) or ``active_overexposed`` (exposure > ``max_share``);
    ``active`` when nothing was estimated (None)."""
    if exposure is None:
        return ACTIVE
    if exposure == 0:
        return UNREACHED
    return OVEREXPOSED if exposure > max_share else ACTIVE


def added_item_exposure(rank: RankFn, snapshot, items: np.ndarray, item_ids: list[str], histories: np.ndarray,
                        k: int, max_share: float, cap: float | None = None) -> dict:
    """Exposure of the added ``items`` [m] (catalog indices; ``item_ids`` [m] their ids) on ``histories`` [n, L]
    decoded by ``rank`` with ``snapshot``, top-``k``.

    Returns {"items": [{"id", "exposure", "status"}] in ``items`` order, "warnings": [str], "estimate": {"cases":
    "valid", "n_histories", "k", "max_item_share"} | None}; with no histories, exposure None and status active
    (``estimate`` None: nothing was estimated). ``cap``: the share the service's exposure cap holds each new item
    to as it serves (the estimate is of the uncapped lists).
    """
    if len(histories) == 0:
        return {"items": [{"id": i, "exposure": None, "status": ACTIVE} for i in item_ids], "warnings": [],
                "estimate": None}
    lists = rank(snapshot, histories, k)
    hits = np.zeros(len(items), np.int64)
    for ranked in lists:
        hits += np.isin(items, np.asarray(ranked.items)[:k])
    n = len(lists)
    out, warnings = [], []
    for item_id, count in zip(item_ids, hits):
        share = float(count) / n
        status = exposure_status(share, max_share)
        out.append({"id": item_id, "exposure": share, "status": status})
        if status == UNREACHED:
            warnings.append(f"item {item_id!r} reaches no one: it is in none of the top-{k} lists of {n} sampled "
                            "validation histories (exposure 0); it is served but will rarely if ever be shown — "
                            "a more descriptive text, or a smaller edit.lam, gives it more reach")
        elif status == OVEREXPOSED:
            warnings.append(f"item {item_id!r} is overexposed: it is in {100 * share:.1f}% of the top-{k} lists of "
                            f"{n} sampled validation histories (more than max_item_share {100 * max_share:.1f}%); "
                            + (f"the service's exposure cap holds it to {100 * cap:.1f}% of the lists it serves"
                               if cap is not None else "it takes slots from other items — consider rolling the "
                               "batch back"))
    return {"items": out, "warnings": warnings,
            "estimate": {"cases": "valid", "n_histories": n, "k": k, "max_item_share": max_share}}
