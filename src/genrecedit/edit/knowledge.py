"""Knowledge preparation (METHOD §5.1-5.2): which items to inject, and the histories that teach them.

A request is (history, cold item). For SID position p it becomes the edit request s_p = (history, c_0..c_{p-1}),
o_p = c_p; ``keys.py`` builds those on the fly from the item's codes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genrecedit.data.dataset import PAD_ITEM, CaseSet, Split
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


def items_to_edit(split: Split) -> np.ndarray:
    """Every catalog item absent from the (test-user-filtered) training split, never chosen by looking at test."""
    return split.cold_items()


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
    """
    n_items = len(warm)
    nonempty = np.flatnonzero(train.history_lengths() > 0)
    # training samples grouped by target item, most recent first
    order = nonempty[np.lexsort((-train.timestamps[nonempty], train.targets[nonempty]))]
    targets_sorted = train.targets[order]
    starts = np.searchsorted(targets_sorted, np.arange(n_items), side="left")
    ends = np.searchsorted(targets_sorted, np.arange(n_items), side="right")
    near = nearest_warm(embeddings, items, warm, neighbours)
    counts = ends - starts
    handed_out = np.zeros(n_items, np.int64)  # per warm item, occurrences already given to a cold item
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
    source_arr = np.asarray(source, np.int64)
    return EditRequests(train.histories[source_arr] if len(source_arr) else
                        np.full((0, train.histories.shape[1]), PAD_ITEM, np.int64),
                        np.asarray(owner, np.int64), source_arr)


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
        idx = idx[np.lexsort((-cases.timestamps[idx], cases.targets[idx]))]
        rank = np.arange(len(idx)) - np.searchsorted(cases.targets[idx], cases.targets[idx], side="left")
        idx = np.sort(idx[rank < per_item])
    return EditRequests(cases.histories[idx], cases.targets[idx], np.full(len(idx), -1, np.int64))
