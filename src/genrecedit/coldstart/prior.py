"""A decode-time content prior: new items enter the ranking by how well their text matches the user's history.

A new item with only its text has no signal the backbone learnt; the history's content does. Inside a decoded SID
prefix (a subtree of the catalog trie) that holds new items, the prior moves a bounded share of that prefix's
probability to those items, by content similarity between the history and each item:

    P(c | h) = P_base(prefix_d(c) | h) · β · w(c | h),
    w(c | h) = exp(s(h, c) / τ) / (exp(θ / τ) + Σ_c' exp(s(h, c') / τ))

with the sum over the new items c' of the same prefix, s the cosine similarity of the history's content vector (the
mean of its last ``recent`` items' text embeddings) and an item's embedding, and θ a "none of them" option: a
history whose content matches no new item of the prefix moves almost nothing (the gate). Every other item of a
touched prefix keeps its base probability times 1 − β · (1 − w_none), so each prefix keeps its total probability;
prefixes without new items keep their base scores exactly. ``scope`` 0 treats the whole catalog as one prefix
(probability 1): a global mixture of the recommender and a content retriever.

``head`` keeps the recommender's own first picks in front: the beam's first ``head`` items keep ranks 1..head and
the mixture orders the slots after them. NDCG weighs the first ranks most, so a new item placed above a confident
warm pick costs the warm user most and gains the new item least (a recall@10 hit counts the same at rank 4 as at 1).

``novel`` gives histories whose last item is itself new a setting of their own (and ``novel_only`` leaves every
other history's list as the beam made it): there the backbone knows the last item least, and users move on to new
items most, so the two kinds of history want different budgets — and choosing one setting per kind, each within the
warm bound on its own histories, keeps the bound whatever share of requests each kind makes (that share grows as
new items accumulate).

The prior reads the beams' surviving prefixes (``Beams.levels``, decoded with ``record_levels``), so a new item is
reachable only under a prefix the beam decoded: the backbone says which kind of item comes next, the text says
which new item of that kind. Nothing here is trained; the new items' interactions are never used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from genrecedit.data.dataset import PAD_ITEM, ends_with
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
    # β for a history whose last `recent` items are all new themselves (items the backbone never learnt, so its own
    # scores say little there, and such users move on to new items about twice as often); a history with a share s
    # of new items among them gets β + s · (novel_budget − β). None: the same β for every history
    novel_budget: float | None = None
    head: int = 0  # the beam's first `head` items keep their ranks; the mixture orders the slots after them
    # the setting for histories whose last item is new (None: this one for every history; its `enabled` false:
    # those histories keep the beam's list); its own `novel` is None
    novel: "PriorConfig | None" = None
    novel_only: bool = False  # histories whose last item is warm (or empty) keep the beam's list

    @staticmethod
    def of(data: dict) -> "PriorConfig":
        """From a plain mapping (a selection or report JSON), ``novel`` included."""
        novel = data.get("novel")
        return PriorConfig(**{**data, "novel": PriorConfig.of(novel) if isinstance(novel, dict) else novel})

    @property
    def stratified(self) -> bool:
        return self.novel is not None or self.novel_only

    def __post_init__(self) -> None:
        if self.novel is not None:
            if not isinstance(self.novel, PriorConfig) or self.novel.stratified:
                raise ConfigError("prior.novel must be a prior setting without a novel/novel_only of its own")
        if self.novel_only and self.novel is None:
            raise ConfigError("prior.novel_only needs prior.novel (the setting for histories ending with a new item)")
        if not 0 < self.budget < 1:
            raise ConfigError(f"prior.budget must be in (0, 1), got {self.budget}")
        if self.novel_budget is not None and not 0 < self.novel_budget < 1:
            raise ConfigError(f"prior.novel_budget must be in (0, 1) or null, got {self.novel_budget}")
        if not self.temperature > 0:
            raise ConfigError(f"prior.temperature must be > 0, got {self.temperature}")
        if not -1 <= self.threshold <= 1:
            raise ConfigError(f"prior.threshold is a cosine in [-1, 1], got {self.threshold}")
        if self.scope < 0:
            raise ConfigError(f"prior.scope must be ≥ 0, got {self.scope}")
        if self.recent < 1:
            raise ConfigError(f"prior.recent must be ≥ 1, got {self.recent}")
        if self.head < 0:
            raise ConfigError(f"prior.head must be ≥ 0, got {self.head}")


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


@dataclass
class _Rows:
    """``ContentPrior.prepare``'s state for a chunk of rows: sims [n, m] (float32); slot [n, m] the decoded prefix
    (column of prefix_scores) each new item lies under, W for none; prefix_scores [n, W]; the beams' items and scores
    [n, K]; item_slot [n, K] each beam item's prefix column (-1: none); col / is_new [n, K]: a beam item's column
    among the new items, and whether it is one; novelty [n] the share of new items among the history's last `recent`
    items (0 for an empty history)."""

    sims: torch.Tensor
    slot: torch.Tensor
    prefix_scores: torch.Tensor
    items: torch.Tensor
    scores: torch.Tensor
    item_slot: torch.Tensor
    col: torch.Tensor
    is_new: torch.Tensor
    novelty: torch.Tensor  # [n] float64: the share of new items among the history's last `recent` items
    # per (temperature, threshold, k): what the mixture computes over every new item (``ContentPrior._ranked_new``)
    ranked: dict = field(default_factory=dict)


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
        self.novel = None
        if cfg.novel is not None and cfg.novel.enabled:
            self.novel = ContentPrior(cfg.novel, embeddings, codes, new_items, trie)

    def apply(self, histories: np.ndarray, beams: Beams, k: int | None = None) -> Beams:
        """Mix the new items into each row's ranking; [n, L] histories and their ``beams`` (decoded with
        ``record_levels`` when scope ≥ 1) -> the top ``k`` (default: the beams' width) of the mixture. A stratified
        setting mixes histories whose last item is new with ``cfg.novel`` and the others with this setting (or not
        at all, ``novel_only``)."""
        k = beams.items.shape[1] if k is None else k
        if len(self.new_items) == 0:  # a catalog without new items: nothing to mix in
            return beams.head(k)
        if not self.cfg.stratified:
            return self.mix(self.prepare(histories, beams), k)
        novel = torch.as_tensor(self.ends_new(histories))
        unmixed = beams.head(k)
        if self.cfg.novel_only:
            rest = unmixed
        else:
            rest = self.mix(self.prepare(histories, beams), k, replace(self.cfg, novel=None, novel_only=False))
        if not bool(novel.any()):
            return rest
        own = self.novel.mix(self.novel.prepare(histories, beams), k) if self.novel is not None else unmixed
        if own.items.shape[1] != rest.items.shape[1]:  # a beam narrower than k: pad the shorter with empty slots
            width = max(own.items.shape[1], rest.items.shape[1])
            own, rest = _padded(own, width), _padded(rest, width)
        pick = novel[:, None]
        return Beams(torch.where(pick, own.items, rest.items), torch.where(pick, own.scores, rest.scores),
                     torch.where(pick[:, :, None], own.sids, rest.sids))

    def ends_new(self, histories: np.ndarray) -> np.ndarray:
        """[n] bool: the history's last item is one of this prior's new items."""
        return ends_with(histories, self.new_items.numpy())

    def prepare(self, histories: np.ndarray, beams: Beams) -> list["_Rows"]:
        """What ``mix`` needs that does not depend on the budget, temperature or threshold: the history-item
        similarities and which decoded prefix each new item and each beam item lies under (chunks of rows)."""
        if self.cfg.scope > 0 and not beams.levels:
            raise ConfigError("the content prior needs the beams' prefixes: decode with record_levels=True")
        return [self._prepare_rows(histories[s:s + CHUNK_ROWS], beams, slice(s, s + CHUNK_ROWS))
                for s in range(0, len(histories), CHUNK_ROWS)]

    def mix(self, prepared: list["_Rows"], k: int, cfg: PriorConfig | None = None) -> Beams:
        """The top ``k`` of the mixture for ``prepare``'s rows, with ``cfg``'s budget, temperature, threshold and
        head (default: this prior's; its scope and recent must be this prior's)."""
        cfg = cfg or self.cfg
        return self.mix_heads(prepared, k, cfg, (cfg.head,))[cfg.head]

    def mix_heads(self, prepared: list["_Rows"], k: int, cfg: PriorConfig,
                  heads: tuple[int, ...]) -> dict[int, Beams]:
        """``mix`` for several ``head`` values at the cost of one mixture (``cfg.head`` is ignored): head -> Beams."""
        if (cfg.scope, cfg.recent) != (self.cfg.scope, self.cfg.recent):
            raise ConfigError("mix: scope and recent are fixed by prepare; build another prior for others")
        if any(h < 0 for h in heads):
            raise ConfigError(f"prior.head must be ≥ 0, got {heads}")
        parts = [self._mix_rows(rows, cfg, k, heads) for rows in prepared]
        if not parts:
            empty = torch.zeros((0, k), dtype=torch.long)
            none = Beams(empty, empty.float(), torch.zeros((0, k, self.codes.shape[1]), dtype=torch.long))
            return {h: none for h in heads}
        return {h: Beams(*(torch.cat([p[h][i] for p in parts]) for i in range(3))) for h in heads}

    def _prepare_rows(self, histories: np.ndarray, beams: Beams, rows: slice) -> "_Rows":
        items, scores = beams.items[rows], beams.scores[rows].double()
        n = items.shape[0]
        sims = content_vectors(self.unit, histories, self.cfg.recent) @ self.new_unit.T  # [n, m]
        if self.cfg.scope == 0:
            nodes = torch.zeros((n, 1), dtype=torch.long)
            prefix_scores = torch.zeros((n, 1), dtype=torch.float64)
        else:
            nodes, prefix_scores = beams.levels[self.cfg.scope - 1]
            nodes, prefix_scores = nodes[rows], prefix_scores[rows].double()
        width = nodes.shape[1]
        # slot[b, c]: the decoded prefix of row b that new item c lies under (width: none)
        match = nodes[:, :, None] == self.new_node[None, None, :]  # [n, W, m]
        slot = torch.where(match.any(1), match.to(torch.int8).argmax(1), width).to(torch.int16)
        present = items >= 0
        item_prefix = self.item_node[items.clamp(min=0)]
        at = (nodes[:, None, :] == item_prefix[:, :, None]) & present[:, :, None]  # [n, K, W]
        item_slot = torch.where(at.any(2), at.to(torch.int8).argmax(2).long(), -1)
        col = torch.searchsorted(self.new_items, items.clamp(min=0)).clamp(max=len(self.new_items) - 1)
        is_new = present & (self.new_items[col] == items)
        last = torch.as_tensor(np.asarray(histories)[:, -self.cfg.recent:], dtype=torch.long)
        valid = last != PAD_ITEM
        novel = (torch.isin(last, self.new_items) & valid).sum(1)
        novelty = novel.double() / valid.sum(1).clamp(min=1)
        return _Rows(sims, slot, prefix_scores, items, scores, item_slot, col, is_new, novelty)

    def _ranked_new(self, r: "_Rows", cfg: PriorConfig, k: int) -> tuple:
        """What the mixture computes over all m new items, which the budget does not change (it adds log β, one
        constant per row, to every candidate of the row): each prefix's log normaliser lse [n, W], and per row
        the ``k`` best new items not in the beam (their columns [n, k]) with the terms of their score (the prefix's
        log-probability, z, the prefix's lse; [n, k] each) and those terms for each beam item's own column [n, K].
        Cached on ``r`` per (τ, θ, k): a grid's budgets share one pass over the new items."""
        key = (cfg.temperature, cfg.threshold, k)
        if key in r.ranked:
            return r.ranked[key]
        z = r.sims.double() / cfg.temperature
        n, width = r.prefix_scores.shape
        slot = r.slot.long()
        top = 1.0 / cfg.temperature  # z ≤ 1 / τ: exp(z - top) ≤ 1 never overflows
        mass = torch.zeros((n, width + 1), dtype=torch.float64).scatter_add_(1, slot, torch.exp(z - top))[:, :width]
        none = cfg.threshold / cfg.temperature
        lse = top + torch.log(math.exp(none - top) + mass)  # [n, W] log of the prefix's softmax normaliser
        safe = slot.clamp(max=width - 1)
        base, lse_at = r.prefix_scores.gather(1, safe), lse.gather(1, safe)
        reachable = (slot < width) & torch.isfinite(base)
        # a new item the beam also found is counted once, in the beam's entry
        found = torch.zeros(z.shape, dtype=torch.long).scatter_add_(1, r.col, r.is_new.long()) > 0
        order = torch.where(reachable & ~found, base + z - lse_at, float("-inf"))  # the candidates' order
        idx = order.topk(min(k, order.shape[1]), dim=1).indices
        own = torch.where(reachable.gather(1, r.col), 0.0, float("-inf"))  # a beam item's column: -inf unreachable
        out = (lse, idx, torch.isfinite(order.gather(1, idx)), base.gather(1, idx), z.gather(1, idx),
               lse_at.gather(1, idx), base.gather(1, r.col) + own, z.gather(1, r.col), lse_at.gather(1, r.col))
        r.ranked[key] = out
        return out

    def _mix_rows(self, r: "_Rows", cfg: PriorConfig, k: int, heads: tuple[int, ...]) -> dict[int, tuple]:
        lse, c_idx, ok, base, z, lse_at, own_base, own_z, own_lse = self._ranked_new(r, cfg, k)
        n, width = r.prefix_scores.shape
        none = cfg.threshold / cfg.temperature
        budget = torch.full((n, 1), cfg.budget, dtype=torch.float64)
        if cfg.novel_budget is not None:
            budget = budget + (cfg.novel_budget - cfg.budget) * r.novelty[:, None]
        moved = budget * (1.0 - torch.exp(none - lse))  # share of each prefix's probability that moves
        log_budget = torch.log(budget)
        # a candidate's score: its prefix's log-probability + log β + z − the prefix's lse (a prefix's mixture)
        c_scores = torch.where(ok, base + log_budget + z - lse_at, float("-inf"))
        # the beams' own items: scaled by what their prefix gave away; a new item also found by the beam keeps
        # both shares (the mixture adds them)
        present = r.items >= 0
        give = torch.where(r.item_slot >= 0, moved.gather(1, r.item_slot.clamp(min=0)), torch.zeros_like(r.scores))
        kept = r.scores + torch.log1p(-give)
        from_prior = torch.where(r.is_new, own_base + log_budget + own_z - own_lse, float("-inf"))
        kept = torch.where(r.is_new, torch.logaddexp(kept, from_prior), kept)
        all_items = torch.cat([r.items, self.new_items[c_idx]], dim=1)
        all_scores = torch.cat([torch.where(present, kept, float("-inf")), c_scores], dim=1)
        all_scores = torch.where(all_items >= 0, all_scores, float("-inf"))
        return {h: self._ranked(all_items, all_scores, present, h, k) for h in heads}

    def _ranked(self, all_items: torch.Tensor, all_scores: torch.Tensor, present: torch.Tensor, head: int, k: int):
        """The top ``k`` of the candidates by mixture score, the beam's first ``head`` items (the first columns of
        the candidates, in beam order) in front: (items, scores, sids), each item's score its mixture score."""
        key = all_scores
        if head > 0:
            width = min(head, present.shape[1])
            order = torch.arange(width, 0, -1, dtype=all_scores.dtype)  # first beam item: the largest key
            front = torch.where(present[:, :width], 1e300 * order / width, float("-inf"))  # above any log-prob
            key = torch.cat([front, all_scores[:, width:]], 1)
        top, pick = key.topk(min(k, key.shape[1]), dim=1)
        best = all_scores.gather(1, pick)
        out_items = torch.where(torch.isfinite(top) & torch.isfinite(best), all_items.gather(1, pick), -1)
        best = torch.where(out_items >= 0, best, float("-inf"))
        out_sids = self.codes[out_items.clamp(min=0)]
        out_sids = torch.where(out_items[:, :, None] >= 0, out_sids, -1)
        return out_items, best.float(), out_sids


def _padded(beams: Beams, width: int) -> Beams:
    pad = width - beams.items.shape[1]
    if pad == 0:
        return beams
    n, _, p = beams.sids.shape
    return Beams(torch.cat([beams.items, torch.full((n, pad), -1, dtype=beams.items.dtype)], 1),
                 torch.cat([beams.scores, torch.full((n, pad), float("-inf"), dtype=beams.scores.dtype)], 1),
                 torch.cat([beams.sids, torch.full((n, pad, p), -1, dtype=beams.sids.dtype)], 1))
