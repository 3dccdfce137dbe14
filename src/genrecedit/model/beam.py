"""Beam search over SIDs, constrained by the catalog trie (or unconstrained, as the paper decodes).

Item score = Σ_p log softmax over position p's tokens (not renormalised over the trie's allowed children), so a
constrained beam as wide as the catalog returns exactly the brute-force ranking of every catalog item.

With a ``PreservingSchedule`` (trigger ``preserve``) each item is scored by the model that knows it: an edited item
by the edited model, every other item by the unedited one, so the edit adds the new items to the ranking without
moving any other item's score. A beam is ranked by the best score its subtree can still reach.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from genrecedit.model.decoder import DecoderCache, SteppedDecoder, StepEdits
from genrecedit.model.tokens import PAD, TokenLayout
from genrecedit.model.trie import PrefixTrie

EditSchedule = Callable[[int], StepEdits | None]  # decoding step t -> the edits that fire at it


class PreservingSchedule:
    """An edit schedule whose items outside ``edited_sids`` [n, P] keep the unedited model's scores (see above)."""

    def __init__(self, schedule: EditSchedule, edited_sids: np.ndarray) -> None:
        self.schedule = schedule
        self.edited_sids = np.asarray(edited_sids, dtype=np.int64).reshape(-1, edited_sids.shape[-1])
        self._flags: tuple | None = None  # (trie, edited flags, other flags): tries are immutable

    def __call__(self, t: int) -> StepEdits | None:
        return self.schedule(t)

    def subtree_flags(self, trie: PrefixTrie) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per trie level 1..P: whether a node's subtree holds an edited item, and whether it holds another one."""
        cached = self._flags
        if cached is None or cached[0] is not trie:
            edited = np.zeros(trie.n_items, bool)
            found = trie.walk(self.edited_sids)
            edited[found[found >= 0]] = True
            cached = (trie, trie.subtree_flags(np.flatnonzero(edited)), trie.subtree_flags(np.flatnonzero(~edited)))
            self._flags = cached
        return cached[1], cached[2]


@dataclass
class Beams:
    """items [B, K] item indices (-1: no item), scores [B, K] log-probabilities (-inf for empty slots),
    sids [B, K, P] the decoded codes. levels (only when asked for, ``record_levels``): per prefix length
    p = 1..P-1, the (trie nodes [B, beam], scores [B, beam]) of the beams that survived step p - 1 — the decoded
    prefixes of p codes and their log-probabilities (node -1 / score -inf: an empty beam slot)."""

    items: torch.Tensor
    scores: torch.Tensor
    sids: torch.Tensor
    levels: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def rows(self, mask: np.ndarray) -> "Beams":
        """The lists of the rows ``mask`` selects (bool [B] or indices); ``levels`` are not kept."""
        return Beams(self.items[mask], self.scores[mask], self.sids[mask])

    def head(self, k: int) -> "Beams":
        """Each list's first ``k`` entries; ``levels`` are not kept."""
        return Beams(self.items[:, :k], self.scores[:, :k], self.sids[:, :k])

    @staticmethod
    def of_items(items: np.ndarray, scores: np.ndarray, codes: np.ndarray) -> "Beams":
        """Lists re-ranked outside beam search: items [B, K] (-1: empty), their scores [B, K] and the catalog's
        codes [n_items, P], from which each entry's SIDs are read (-1 for an empty slot)."""
        items = torch.as_tensor(np.asarray(items, np.int64))
        sids = torch.as_tensor(np.asarray(codes, np.int64))[items.clamp(min=0)]
        return Beams(items, torch.as_tensor(np.asarray(scores), dtype=torch.float32),
                     torch.where(items[:, :, None] >= 0, sids, -1))


def beam_search(decoder: SteppedDecoder, layout: TokenLayout, trie: PrefixTrie, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, beam: int, k: int, constrained: bool = True,
                edits: EditSchedule | None = None, cached: bool = True, record_levels: bool = False) -> Beams:
    """Top-k items for each of B encoder inputs [B, S] (mask [B, S]); ``k <= beam``.

    cached: decode with the KV cache (fast path); False recomputes the whole prefix with HF's decoder every step
    (the reference semantics of docs/method.md §5.6), which must give identical beams.

    constrained: only SIDs of catalog items (the trie); otherwise any token of the right position, and decoded
    SIDs that name no item are dropped from the result (so fewer than k items may come back).

    record_levels: also return every intermediate level's surviving prefixes (``Beams.levels``), which a
    decode-time content prior (``genrecedit.coldstart.prior``) mixes new items into.
    """
    if k > beam:
        raise ValueError(f"k={k} must not exceed beam={beam}")
    n_pos = layout.n_positions
    batch = input_ids.shape[0]
    device = decoder.device
    preserve = edits.subtree_flags(trie) if isinstance(edits, PreservingSchedule) else None
    enc = decoder.encode(input_ids.to(device), attention_mask.to(device))
    tokens = torch.full((batch,), PAD, dtype=torch.long, device=device)
    step_edits = edits(0) if edits else None
    if cached:
        out, cache = decoder.step(tokens, DecoderCache(), enc, step_edits, columns=layout.position_slice(0),
                                  base_logits=preserve is not None)
        logits, base = out.logits, out.base_logits
    else:
        logits = decoder.prefix_logits(tokens[:, None], enc, step_edits)[:, layout.position_slice(0)]
        base = _reference_base(decoder, tokens[:, None], enc, step_edits, None, preserve, layout.position_slice(0))
    nodes = torch.zeros(batch, dtype=torch.long, device=device)
    state = _extend(logits, base, layout, trie, 0, nodes, None, beam, constrained, preserve)
    scores, codes, nodes = state.scores, state.codes, state.nodes
    levels = [_padded_level(state, beam)] if record_levels and n_pos > 1 else []
    width = scores.shape[1]
    rows = torch.arange(batch, device=device).repeat_interleave(width)
    # cached: each request's encoder output serves its beams without being copied per beam
    enc = enc.beams(width) if cached else enc.select(rows)
    cache = cache.select(rows) if cached else None
    sids = codes[:, :, None]
    for t in range(1, n_pos):
        step_edits = edits(t) if edits else None
        if cached:
            tokens = (sids[:, :, -1] + layout.offsets[t - 1]).reshape(-1)
            out, cache = decoder.step(tokens, cache, enc, step_edits, columns=layout.position_slice(t),
                                      prefix=sids.reshape(batch * width, -1), base_logits=preserve is not None)
            logits, base = out.logits, out.base_logits
        else:
            prefix_codes = sids.reshape(batch * width, -1) + torch.tensor(layout.offsets[:t], device=device)
            start = torch.full((batch * width, 1), PAD, dtype=torch.long, device=device)
            prefix = torch.cat([start, prefix_codes], dim=1)
            logits = decoder.prefix_logits(prefix, enc, step_edits,
                                           codes=sids.reshape(batch * width, -1))[:, layout.position_slice(t)]
            base = _reference_base(decoder, prefix, enc, step_edits, sids.reshape(batch * width, -1), preserve,
                                   layout.position_slice(t))
        state = _extend(logits, base, layout, trie, t, nodes.reshape(-1), state, beam, constrained, preserve)
        scores, new_codes, nodes, parent = state.scores, state.codes, state.nodes, state.parent
        width_t = scores.shape[1]
        flat_parent = (torch.arange(batch, device=device)[:, None] * width + parent).reshape(-1)
        sids = torch.cat([sids.reshape(batch * width, -1)[flat_parent].reshape(batch, width_t, -1),
                          new_codes[:, :, None]], dim=2)
        if t < n_pos - 1:
            if record_levels:
                levels.append(_padded_level(state, beam))
            cache = cache.select(flat_parent) if cached else None
            if width_t != width:  # new beams stay with their request, so regrouping is enough when cached
                enc = enc.beams(width_t) if cached else enc.select(flat_parent)
        width = width_t
    if constrained:
        items = torch.where(nodes >= 0, trie.leaf_item.to(device)[nodes.clamp(min=0)], -1)
    else:
        items = torch.from_numpy(trie.walk(sids.reshape(-1, n_pos).cpu().numpy())).to(device).reshape(batch, -1)
    items = torch.where(torch.isfinite(scores), items, -1)
    out = _compact(items, scores, sids, k)
    if record_levels:
        out.levels = levels
    return out


def _padded_level(state: "_Step", beam: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's (nodes, scores) [B, beam]: fewer surviving beams are padded with node -1 and score -inf."""
    nodes = torch.where(torch.isfinite(state.scores), state.nodes, -1)
    pad = beam - nodes.shape[1]
    if pad > 0:
        return F.pad(nodes, (0, pad), value=-1), F.pad(state.scores, (0, pad), value=float("-inf"))
    return nodes, state.scores


def _reference_base(decoder: SteppedDecoder, prefix: torch.Tensor, enc, step_edits: StepEdits | None,
                    codes: torch.Tensor | None, preserve, columns: slice) -> torch.Tensor | None:
    """The uncached path's unedited logits (``columns`` of them) where the cached one would report them (an edit
    fired at this step)."""
    if preserve is None or step_edits is None or not step_edits.edits:
        return None
    return decoder.prefix_logits(prefix, enc, None, codes=codes)[:, columns]


@dataclass
class _Step:
    """Beam state after one step: scores [B, W] rank the beams; with preserved scoring, edited / base [B, W] are
    each beam's cumulative log-probability under the edited and the unedited model."""

    scores: torch.Tensor
    codes: torch.Tensor
    nodes: torch.Tensor
    parent: torch.Tensor | None = None
    edited: torch.Tensor | None = None
    base: torch.Tensor | None = None


def _extend(logits: torch.Tensor, base_logits: torch.Tensor | None, layout: TokenLayout, trie: PrefixTrie, t: int,
            nodes: torch.Tensor, prev: _Step | None, beam: int, constrained: bool, preserve) -> _Step:
    """One beam step. logits [R, K_t] of position t's tokens with R = B*W rows (W = 1 at t = 0); returns the new
    [B, W'] scores, codes, level-(t+1) nodes and (after t = 0) each new beam's parent index in [0, W).

    preserve: the schedule's subtree flags (``PreservingSchedule.subtree_flags``) or None. base_logits: the
    unedited logits where an edit fired (None: the same as ``logits``). Nodes are tracked when constrained or
    preserving (-1: the beam left the catalog; only unconstrained decoding gets there)."""
    logp = F.log_softmax(logits.float(), dim=-1)  # [R, K_t]
    rows, size = logp.shape
    batch = rows if prev is None else prev.scores.shape[0]
    width = rows // batch
    track = constrained or preserve is not None
    # the level-(t+1) node each continuation reaches (-1: it leaves the catalog, or its beam already had)
    child = torch.where((nodes >= 0)[:, None], trie.child[t][nodes.clamp(min=0)], -1) if track else None
    if constrained:
        ok = child >= 0
        logp = logp.masked_fill(~ok, float("-inf"))
    edited = base = None
    if preserve is None:
        total = logp if prev is None else prev.scores.reshape(-1)[:, None] + logp
    else:
        logb = logp if base_logits is None else F.log_softmax(base_logits.float(), dim=-1)
        if constrained and base_logits is not None:
            logb = logb.masked_fill(~ok, float("-inf"))
        edited = logp if prev is None else prev.edited.reshape(-1)[:, None] + logp
        base = logb if prev is None else prev.base.reshape(-1)[:, None] + logb
        # a continuation that leaves the catalog is scored by the unedited model
        flags_edited, flags_other = preserve
        has_edit = flags_edited[t][child.clamp(min=0)] & (child >= 0)
        has_other = flags_other[t][child.clamp(min=0)] | (child < 0)
        neg = torch.full_like(edited, float("-inf"))
        total = torch.maximum(torch.where(has_other, base, neg), torch.where(has_edit, edited, neg))
    top, flat = total.view(batch, width * size).topk(min(beam, width * size), dim=1)
    parent, code = flat // size, flat % size
    if track:
        new_nodes = torch.where(torch.isfinite(top), child.view(batch, width * size).gather(1, flat), -1)
    else:
        new_nodes = torch.zeros_like(code)
    pick = (lambda x: None) if preserve is None else (lambda x: x.view(batch, width * size).gather(1, flat))
    return _Step(top, code, new_nodes, None if prev is None else parent, pick(edited), pick(base))


def _compact(items: torch.Tensor, scores: torch.Tensor, sids: torch.Tensor, k: int) -> Beams:
    """Move valid items to the front of each row (order kept) and cut to k columns."""
    valid = items >= 0
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    items = items.gather(1, order)[:, :k]
    scores = scores.gather(1, order)[:, :k]
    sids = sids.gather(1, order[:, :, None].expand(-1, -1, sids.shape[2]))[:, :k]
    scores = torch.where(items >= 0, scores, torch.full_like(scores, float("-inf")))
    if items.shape[1] < k:
        pad = k - items.shape[1]
        items = F.pad(items, (0, pad), value=-1)
        scores = F.pad(scores, (0, pad), value=float("-inf"))
        sids = F.pad(sids, (0, 0, 0, pad), value=-1)
    return Beams(items, scores, sids)


def brute_force_scores(decoder: SteppedDecoder, layout: TokenLayout, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor, codes: np.ndarray) -> torch.Tensor:
    """[B, n_items] exact log-probability of every catalog item (teacher-forced); for tests and small catalogs."""
    device = decoder.device
    enc = decoder.encode(input_ids.to(device), attention_mask.to(device))
    batch, n_items = input_ids.shape[0], codes.shape[0]
    code_t = torch.from_numpy(codes).to(device).repeat(batch, 1)  # [B*n, P]
    return sid_log_probs(decoder, layout, enc, code_t, n_items).sum(1).view(batch, n_items)


def sid_log_probs(decoder: SteppedDecoder, layout: TokenLayout, enc, codes: torch.Tensor, per_row: int) -> torch.Tensor:
    """[B * per_row, P] teacher-forced log P(code_p | h, code_<p) of ``codes`` [B * per_row, P] (unconstrained by
    the trie), each history of the encoded batch ``enc`` [B] scoring the ``per_row`` SIDs that follow it."""
    enc = enc.select(torch.arange(enc.hidden.shape[0], device=codes.device).repeat_interleave(per_row))
    cache = DecoderCache()
    tokens = torch.full((codes.shape[0],), PAD, dtype=torch.long, device=codes.device)
    steps = []
    for t in range(layout.n_positions):
        out, cache = decoder.step(tokens, cache, enc)
        logp = F.log_softmax(out.logits[:, layout.position_slice(t)].float(), dim=-1)
        steps.append(logp.gather(1, codes[:, t : t + 1]).squeeze(1))
        tokens = codes[:, t] + layout.offsets[t]
    return torch.stack(steps, 1)
