"""Knowledge preparation (docs/method.md §5.1-5.2): which items to inject, and the histories that teach them.

A request is (history, cold item). For SID position p it becomes the edit request s_p = (history, c_0..c_{p-1}),
o_p = c_p; ``keys.py`` builds those on the fly from the item's codes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genrecedit.data.dataset import PAD_ITEM, CaseSet
from genrecedit.errors import EmptyInputError


@dataclass(frozen=True)
class EditRequests:
    """histories [m, L] item indices (left-padded); items [m] the cold item each request teaches;
    sources [m] index into ``split.train`` of the training sample a pseudo-history was copied from (-1: none)."""

    histories: np.ndarray
    items: np.ndarray
    sources: np.ndarray

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def subset(self, index: np.ndarray) -> "EditRequests":
        return EditRequests(self.histories[index], self.items[index], self.sources[index])

    @staticmethod
    def concat(parts: list["EditRequests"]) -> "EditRequests":
        return EditRequests(np.concatenate([p.histories for p in parts]), np.concatenate([p.items for p in parts]),
                            np.concatenate([p.sources for p in parts]))


def nearest_warm(embeddings: np.ndarray, items: np.ndarray, warm: np.ndarray, k: int,
                 chunk: int = 4096) -> np.ndarray:
    """Top-k warm items by cosine similarity of text embeddings, most similar first.

    embeddings [n_items, d]; items [m]; warm [n_items] bool -> [m, k] item indices.
    """
    warm_idx = np.flatnonzero(warm)
    if len(warm_idx) == 0:
        raise EmptyInputError("no warm items to borrow histories from")
    emb = torch.nn.functional.normalize(torch.from_numpy(np.asarray(embeddings, np.float32)), dim=1)
    warm_emb = emb[warm_idx]
    k = min(k, len(warm_idx))
    out = []
    for start in range(0, len(items), chunk):
        sims = emb[items[start : start + chunk]] @ warm_emb.T
        out.append(sims.topk(k, dim=1).indices.numpy())
    return warm_idx[np.concatenate(out)] if out else np.zeros((0, k), np.int64)


def row_ids(*arrays: np.ndarray) -> list[np.ndarray]:
    """Exact ids of rows: two rows, of the same or of different ``arrays`` (each [n_i, w] or [n_i], one w, integers),
    get the same id iff they are equal. Returns one int64 id array per input.

    A random 64-bit linear hash, checked exactly afterwards (an exact byte sort if two rows ever collide).
    """
    arrays = tuple(np.asarray(a, np.int64) for a in arrays)
    rows = np.concatenate([a[:, None] if a.ndim == 1 else a for a in arrays])
    weights = np.random.default_rng(0).integers(1, 2**63, size=rows.shape[1], dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        hashed = (rows.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    _, first, ids = np.unique(hashed, return_index=True, return_inverse=True)
    if not np.array_equal(rows, rows[first[ids]]):  # a hash collision: fall back to the exact (slower) sort
        as_bytes = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.itemsize * rows.shape[1]))).ravel()
        _, ids = np.unique(as_bytes, return_inverse=True)
    ids = ids.reshape(-1).astype(np.int64)
    return np.split(ids, np.cumsum([len(a) for a in arrays])[:-1])


def extended_histories(histories: np.ndarray, items: np.ndarray) -> np.ndarray:
    """histories [n, L] (left-padded) with items [n] appended: the last L items of h + [item], left-padded."""
    return np.concatenate([histories[:, 1:], np.asarray(items, histories.dtype)[:, None]], axis=1)


def _occurrences_by_target(train: CaseSet, n_items: int, rows: np.ndarray,
                           prefer: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training samples ``rows`` grouped by target item, most recent first within an item (``prefer`` [n]
    bool: preferred samples before the others, each part most recent first).

    Returns (order, starts, counts): item j's samples are ``order[starts[j] : starts[j] + counts[j]]``.
    """
    ts, targets = train.timestamps[rows], train.targets[rows]
    keys = (-ts, targets) if prefer is None else (-ts, ~prefer[rows], targets)
    order = rows[np.lexsort(keys)]
    targets_sorted = train.targets[order]
    starts = np.searchsorted(targets_sorted, np.arange(n_items), side="left")
    ends = np.searchsorted(targets_sorted, np.arange(n_items), side="right")
    return order, starts, ends - starts


def _hand_out(items: np.ndarray, near: np.ndarray, order: np.ndarray, starts: np.ndarray, counts: np.ndarray,
              per_item: int) -> tuple[np.ndarray, np.ndarray]:
    """For each item, ``per_item`` training samples taken round-robin over its neighbours ``near`` (a row per
    item, most similar first), each neighbour's samples in ``order``; a neighbour's samples are handed out in
    turn across items — an item takes the first one no earlier item took, reusing only when all are taken.

    Returns (owner, source): the item each sample teaches and the sample's index into ``train``.
    """
    handed_out = np.zeros(len(counts), np.int64)  # per warm item, occurrences already given to a cold item
    owner, source = [], []
    for item, nbrs in zip(items, near):
        nbrs = nbrs[counts[nbrs] > 0]
        taken, rounds = 0, 0
        depth = int(counts[nbrs].max()) if len(nbrs) else 0
        while taken < per_item and rounds < depth:
            for j in nbrs:
                if rounds < counts[j]:
                    rank = handed_out[j] % counts[j]
                    handed_out[j] += 1
                    source.append(order[starts[j] + rank])
                    owner.append(item)
                    taken += 1
                    if taken == per_item:
                        break
            rounds += 1
    return np.asarray(owner, np.int64), np.asarray(source, np.int64)


def pseudo_histories(train: CaseSet, warm: np.ndarray, embeddings: np.ndarray, items: np.ndarray, per_item: int,
                     neighbours: int) -> EditRequests:
    """The paper's pseudo-histories: for each item, ``per_item`` histories taken round-robin over its
    ``neighbours`` most text-similar warm items, each the history preceding one of the neighbour's training
    occurrences, most recent occurrence first.

    train: the backbone's training samples; warm [n_items] bool; embeddings [n_items, d]; items [m] indices.
    The catalog may be larger than the split's (items added after training, e.g. by the service).

    Two choices the paper leaves open, both to avoid teaching contradictory targets for one key:
    occurrences with an empty history are skipped (its key is the same for every item), and a neighbour's
    occurrences are handed out in turn across cold items — a cold item takes the neighbour's most recent occurrence
    that no earlier cold item took, falling back to reuse only when all are taken. Deterministic.

    Each request's key is then a training key whose training target is the neighbour (see ``successor_histories``).
    """
    nonempty = np.flatnonzero(train.history_lengths() > 0)
    order, starts, counts = _occurrences_by_target(train, len(warm), nonempty)
    owner, source = _hand_out(items, nearest_warm(embeddings, items, warm, neighbours), order, starts, counts,
                              per_item)
    return EditRequests(train.histories[source] if len(source) else
                        np.full((0, train.histories.shape[1]), PAD_ITEM, np.int64), owner, source)


def successor_histories(train: CaseSet, warm: np.ndarray, embeddings: np.ndarray, items: np.ndarray,
                        per_item: int, neighbours: int) -> EditRequests:
    """Text-only knowledge that does not fight training: histories that *end* with a text-similar warm item.

    For a training occurrence of neighbour j (history h, target j) the request is (h + [j], item): the last
    ``L = train.histories.shape[1]`` items, left-padded. Where ``pseudo_histories`` reuses h itself — a training key
    whose training target is j — this asks "after j, the new item", a key training mostly never saw.

    Same arguments, neighbours and hand-out rule as ``pseudo_histories``; within a neighbour, occurrences whose
    h + [j] is no training sample's history (j was the user's last training item) come first, then the others,
    each part most recent first. Occurrences giving the same h + [j] count once (the most recent), so items
    share a key only when a neighbour runs out. An empty h is kept: [j] is specific to j.
    ``sources``: the training sample (h, j) each request extends. Deterministic.
    """
    ext = extended_histories(train.histories, train.targets)
    ext_id, hist_id = row_ids(ext, train.histories)
    is_key = np.isin(ext_id, hist_id)
    by_ext = np.lexsort((-train.timestamps, ext_id))  # per distinct h + [j], its most recent occurrence first
    distinct = by_ext[np.r_[True, ext_id[by_ext][1:] != ext_id[by_ext][:-1]]] if len(by_ext) else by_ext
    order, starts, counts = _occurrences_by_target(train, len(warm), distinct, prefer=~is_key)
    owner, source = _hand_out(items, nearest_warm(embeddings, items, warm, neighbours), order, starts, counts,
                              per_item)
    return EditRequests(ext[source] if len(source) else np.full((0, train.histories.shape[1]), PAD_ITEM, np.int64),
                        owner, source)


def case_histories(cases: CaseSet, items: np.ndarray, per_item: int | None = None) -> EditRequests:
    """Requests from real cases with a non-empty history whose target is one of ``items`` (at most ``per_item``
    each, most recent first).

    With test cases this is the Upper Bound (analysis only: it reads the test set); with the validation period's
    cases it is the *observed* knowledge source (it precedes the test period, so no leak).
    """
    # an empty history gives every item the same key: such cases would only teach contradictory targets
    keep = np.isin(cases.targets, items) & (cases.history_lengths() > 0)
    idx = np.flatnonzero(keep)
    if per_item is not None and len(idx):
        order, starts, _ = _occurrences_by_target(cases, int(cases.targets[idx].max()) + 1, idx)
        rank = np.arange(len(order)) - starts[cases.targets[order]]
        idx = np.sort(order[rank < per_item])
    return EditRequests(cases.histories[idx], cases.targets[idx], np.full(len(idx), -1, np.int64))
