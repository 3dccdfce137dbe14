"""A decode-time content prior: new items enter the ranking by how well their text matches the user's history.

A new item with only its text has no signal the backbone learnt; the history's content does. Inside a decoded SID
prefix (a subtree of the catalog trie) that holds new items, the prior moves a bounded share of that prefix's
probability to those items, by content similarity between the history and each item:

    P(c | h) = P_base(prefix_d(c) | h) · β · w(c | h),    w(c | h) = exp(s(h, c) / τ) / (exp(θ / τ) + Σ_c' exp(s(h, c') / τ))

with the sum over the new items c' of the same prefix, s the cosine similarity of the history's content vector (the
mean of its last ``recent`` items' text embeddings) and an item's embedding, and θ a "none of them" option: a
history whose content matches no new item of the prefix moves almost nothing (the gate). Every other item of a
touched prefix keeps its base probability times 1 − β · (1 − w_none), so each prefix keeps its total probability;
prefixes without new items keep their base scores exactly. ``scope`` 0 treats the whole catalog as one prefix
(probability 1): a global mixture of the recommender and a content retriever.

The prior reads the beams' surviving prefixes (``Beams.levels``, decoded with ``record_levels``), so a new item is
reachable only under a prefix the beam decoded: the backbone says which kind of item comes next, the text says
which new item of that kind. Nothing here is trained; the new items' interactions are never used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from genrecedit.data.dataset import PAD_ITEM
from genrecedit.errors import ConfigError
from genrecedit.model.beam import Beams
from genrecedit.model.trie import PrefixTrie

CHUNK_ROWS = 512  # histories scored at once: [rows, new items] similarity blocks stay small


@dataclass
class PriorConfig:
    """The content prior's settings (chosen on validation by ``genrecedit coldstart``)."""

    enabled: bool = False
    budget: float = 0.1  # β: the largest share of a prefix's probability that moves to its new items
    temperature: float = 0.05  # τ: softmax temperature over cosine similarities
    threshold: float = 0.6  # θ: the cosine of the "none of them" option (the gate)
    scope: int = 1  # prefix length d the mixture acts in (0: the whole catalog)
    recent: int = 1  # the history's content: the mean embedding of its last `recent` items

    def __post_init__(self) -> None:
        if not 0 < self.budget < 1:
            raise ConfigError(f"prior.budget must be in (0, 1), got {self.budget}")
        if not self.temperature > 0:
            raise ConfigError(f"prior.temperature must be > 0, got {self.temperature}")
        if not -1 <= self.threshold <= 1:
            raise ConfigError(f"prior.threshold is a cosine in [-1, 1], got {self.threshold}")
        if self.scope < 0:
            raise ConfigError(f"prior.scope must be ≥ 0, got {self.scope}")
        if self.recent < 1:
            raise ConfigError(f"prior.recent must be ≥ 1, got {self.recent}")


def normalized(embeddings: np.ndarray) -> torch.Tensor:
    """[n, d] text embeddings -> float32 rows of unit length (zero rows stay zero)."""
    return torch.nn.functional.normalize(torch.as_tensor(np.asarray(embeddings, np.float32)), dim=1)


def content_vectors(unit: torch.Tensor, histories: np.ndarray, recent: int) -> torch.Tensor:
    """[n, L] left-padded histories -> [n, d] unit mean embedding of each history's last ``recent`` items (a zero
    row for an empty history: it matches nothing)."""
    last = torch.as_tensor(np.asarray(histories)[:, -recent:], dtype=torch.long)
    valid = last != PAD_ITEM
    vecs = unit[last.clamp(min=0)] * valid[:, :, None]
    return torch.nn.functional.normalize(vecs.sum(1), dim=1)


class ContentPrior:
    """The prior over one catalog: embeddings [n_items, d], SIDs [n_items, P], the new items [m] it may recommend
    and the catalog's trie (the one the beams were decoded on)."""

    def __init__(self, cfg: PriorConfig, embeddings: np.ndarray, codes: np.ndarray, new_items: np.ndarray,
                 trie: PrefixTrie) -> None:
        n_positions = codes.shape[1]
        if cfg.scope >= n_positions:
            raise ConfigError(f"prior.scope={cfg.scope} must be below the SID length {n_positions}")
        self.cfg = cfg
        self.unit = normalized(embeddings)
        self.codes = torch.as_tensor(np.asarray(codes, np.int64))
        self.new_items = torch.as_tensor(np.unique(np.asarray(new_items, np.int64)))  # sorted: looked up below
        self.new_unit = self.unit[self.new_items]
        self.trie = trie
        # each item's prefix node at the mixture's level (scope 0: the root, node 0 for every item)
        if cfg.scope == 0:
            self.item_node = torch.zeros(len(codes), dtype=torch.long)
        else:
            self.item_node = torch.as_tensor(trie.item_nodes(cfg.scope))
        self.new_node = self.item_node[self.new_items]

    def apply(self, histories: np.ndarray, beams: Beams, k: int | None = None) -> Beams:
        """Mix the new items into each row's ranking; [n, L] histories and their ``beams`` (decoded with
        ``record_levels`` when scope ≥ 1) -> the top ``k`` (default: the beams' width) of the mixture."""
        k = beams.items.shape[1] if k is None else k
        if self.cfg.scope > 0 and not beams.levels:
            raise ConfigError("the content prior needs the beams' prefixes: decode with record_levels=True")
        parts = [self._apply_rows(histories[s:s + CHUNK_ROWS], beams, slice(s, s + CHUNK_ROWS), k)
                 for s in range(0, len(histories), CHUNK_ROWS)]
        if not parts:
            return Beams(beams.items[:, :k], beams.scores[:, :k], beams.sids[:, :k])
        return Beams(*(torch.cat([p[i] for p in parts]) for i in range(3)))

    def _apply_rows(self, histories: np.ndarray, beams: Beams, rows: slice, k: int):
        cfg = self.cfg
        items, scores = beams.items[rows], beams.scores[rows].double()
        n = items.shape[0]
        sims = content_vectors(self.unit, histories, cfg.recent) @ self.new_unit.T  # [n, m]
        z = sims.double() / cfg.temperature
        if cfg.scope == 0:
            nodes = torch.zeros((n, 1), dtype=torch.long)
            prefix_scores = torch.zeros((n, 1), dtype=torch.float64)
        else:
            nodes, prefix_scores = beams.levels[cfg.scope - 1]
            nodes, prefix_scores = nodes[rows], prefix_scores[rows].double()
        width = nodes.shape[1]
        # slot[b, c]: the decoded prefix of row b that new item c lies under (width: none)
        match = nodes[:, :, None] == self.new_node[None, None, :]  # [n, W, m]
        slot = torch.where(match.any(1), match.to(torch.int8).argmax(1).long(), torch.full_like(z, width,
                                                                                                  dtype=torch.long))
        top = 1.0 / cfg.temperature  # z ≤ 1 / τ: exp(z - top) ≤ 1 never overflows
        mass = torch.zeros((n, width + 1), dtype=torch.float64).scatter_add_(1, slot, torch.exp(z - top))[:, :width]
        none = cfg.threshold / cfg.temperature
        lse = top + torch.log(math.exp(none - top) + mass)  # [n, W] log of the prefix's softmax normaliser
        moved = cfg.budget * (1.0 - torch.exp(none - lse))  # share of each prefix's probability that moves
        ok = slot < width
        safe = slot.clamp(max=width - 1)
        cand = prefix_scores.gather(1, safe) + math.log(cfg.budget) + z - lse.gather(1, safe)
        cand = torch.where(ok & torch.isfinite(prefix_scores.gather(1, safe)), cand, float("-inf"))
        # the beams' own items: scaled by what their prefix gave away; a new item also found by the beam keeps
        # both shares (the mixture adds them)
        present = items >= 0
        item_prefix = self.item_node[items.clamp(min=0)]
        at = (nodes[:, None, :] == item_prefix[:, :, None]) & present[:, :, None]  # [n, K, W]
        give = torch.where(at.any(2), moved.gather(1, at.to(torch.int8).argmax(2)), torch.zeros_like(scores))
        kept = scores + torch.log1p(-give)
        col = torch.searchsorted(self.new_items, items.clamp(min=0))
        col = col.clamp(max=len(self.new_items) - 1)
        is_new = present & (self.new_items[col] == items)
        from_prior = torch.where(is_new, cand.gather(1, col), float("-inf"))
        kept = torch.where(is_new, torch.logaddexp(kept, from_prior), kept)
        found = torch.zeros(cand.shape, dtype=torch.long).scatter_add_(1, col, is_new.long()) > 0
        cand = cand.masked_fill(found, float("-inf"))  # counted once, in the beam's entry
        take = min(k, cand.shape[1])
        c_scores, c_idx = cand.topk(take, dim=1)
        all_items = torch.cat([items, self.new_items[c_idx]], dim=1)
        all_scores = torch.cat([torch.where(present, kept, float("-inf")), c_scores], dim=1)
        all_scores = torch.where(all_items >= 0, all_scores, float("-inf"))
        best, pick = all_scores.topk(k, dim=1)
        out_items = torch.where(torch.isfinite(best), all_items.gather(1, pick), -1)
        out_sids = self.codes[out_items.clamp(min=0)]
        out_sids = torch.where(out_items[:, :, None] >= 0, out_sids, -1)
        return out_items, best.float(), out_sids
