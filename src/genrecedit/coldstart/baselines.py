"""Text-only cold-start baselines, scored like the recommender: a content retriever, a reserved-slot hybrid and a
beam + dense re-rank (as LIGER does). Each returns [n, K] ranked item lists."""
from __future__ import annotations

import numpy as np
import torch

from genrecedit.coldstart.prior import CHUNK_ROWS, content_vectors, normalized


def retrieve(embeddings: np.ndarray, histories: np.ndarray, new_items: np.ndarray, k: int,
             recent: int = 1) -> np.ndarray:
    """The content retriever: the ``k`` new items most cosine-similar to the history's content (the mean of its
    last ``recent`` items' embeddings), best first. [n, L] -> [n, k] (-1 for a history with no item)."""
    unit = normalized(embeddings)
    new_items = np.asarray(new_items, np.int64)
    new_unit = unit[torch.as_tensor(new_items)]
    out = np.full((len(histories), min(k, len(new_items))), -1, np.int64)
    for s in range(0, len(histories), CHUNK_ROWS):
        h = np.asarray(histories[s:s + CHUNK_ROWS])
        vec = content_vectors(unit, h, recent)
        idx = (vec @ new_unit.T).topk(out.shape[1], dim=1).indices.numpy()
        out[s:s + len(h)] = np.where((h != -1).any(1)[:, None], new_items[idx], -1)
    return _pad(out, k)


def reserved_slots(beam_items: np.ndarray, retrieved: np.ndarray, s: int, cut: int = 10) -> np.ndarray:
    """The beam's top ``cut - s`` items, then the retriever's top ``s`` (those the beam did not already list),
    then the rest of the beam: [n, K] with K the beam lists' width."""
    n, width = beam_items.shape
    out = np.full((n, width), -1, np.int64)
    for i in range(n):
        head = [x for x in beam_items[i, :cut - s] if x >= 0]
        extra = [x for x in retrieved[i] if x >= 0 and x not in head][:s]
        rest = [x for x in beam_items[i, cut - s:] if x >= 0 and x not in extra]
        row = (head + extra + rest)[:width]
        out[i, :len(row)] = row
    return out


def dense_rerank(embeddings: np.ndarray, histories: np.ndarray, beam_items: np.ndarray, new_items: np.ndarray,
                 recent: int = 1) -> np.ndarray:
    """Beam + dense re-rank: the beam's items together with every new item, ranked by cosine similarity to the
    history's content; [n, K] with K the beam lists' width."""
    unit = normalized(embeddings)
    new_t = torch.as_tensor(np.asarray(new_items, np.int64))
    width = beam_items.shape[1]
    out = np.full(beam_items.shape, -1, np.int64)
    for s in range(0, len(histories), CHUNK_ROWS):
        vec = content_vectors(unit, np.asarray(histories[s:s + CHUNK_ROWS]), recent)
        beam = torch.as_tensor(beam_items[s:s + CHUNK_ROWS])
        beam_sim = torch.where(beam >= 0, (unit[beam.clamp(min=0)] * vec[:, None, :]).sum(-1), float("-inf"))
        # a new item the beam also listed is counted once
        new_sim = vec @ unit[new_t].T
        dup = (beam[:, :, None] == new_t[None, None, :]).any(1)
        new_sim = new_sim.masked_fill(dup, float("-inf"))
        items = torch.cat([beam, new_t.expand(len(beam), -1)], dim=1)
        sims = torch.cat([beam_sim, new_sim], dim=1)
        best, pick = sims.topk(width, dim=1)
        out[s:s + len(beam)] = torch.where(torch.isfinite(best), items.gather(1, pick), -1).numpy()
    return out


def _pad(lists: np.ndarray, k: int) -> np.ndarray:
    if lists.shape[1] >= k:
        return lists[:, :k]
    return np.pad(lists, ((0, 0), (0, k - lists.shape[1])), constant_values=-1)
