"""Beam search over SIDs, constrained by the catalog trie (or unconstrained, as the paper decodes).

Item score = Σ_p log softmax over position p's tokens (not renormalised over the trie's allowed children), so a
constrained beam as wide as the catalog returns exactly the brute-force ranking of every catalog item.
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


@dataclass
class Beams:
    """items [B, K] item indices (-1: no item), scores [B, K] log-probabilities (-inf for empty slots),
    sids [B, K, P] the decoded codes."""

    items: torch.Tensor
    scores: torch.Tensor
    sids: torch.Tensor


def beam_search(decoder: SteppedDecoder, layout: TokenLayout, trie: PrefixTrie, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, beam: int, k: int, constrained: bool = True,
                edits: EditSchedule | None = None, cached: bool = True) -> Beams:
    """Top-k items for each of B encoder inputs [B, S] (mask [B, S]); ``k <= beam``.

    cached: decode with the KV cache (fast path); False recomputes the whole prefix with HF's decoder every step
    (the reference semantics of METHOD §5.6), which must give identical beams.

    constrained: only SIDs of catalog items (the trie); otherwise any token of the right position, and decoded
    SIDs that name no item are dropped from the result (so fewer than k items may come back).
    """
    if k > beam:
        raise ValueError(f"k={k} must not exceed beam={beam}")
    n_pos = layout.n_positions
    batch = input_ids.shape[0]
    device = decoder.device
    enc = decoder.encode(input_ids.to(device), attention_mask.to(device))
    tokens = torch.full((batch,), PAD, dtype=torch.long, device=device)
    if cached:
        out, cache = decoder.step(tokens, DecoderCache(), enc, edits(0) if edits else None,
                                  columns=layout.position_slice(0))
        logits = out.logits
    else:
        logits = decoder.prefix_logits(tokens[:, None], enc, edits(0) if edits else None)[:, layout.position_slice(0)]
    nodes = torch.zeros(batch, dtype=torch.long, device=device)
    scores, codes, nodes = _extend(logits, layout, trie, 0, nodes, None, beam, constrained)
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
                                      prefix=sids.reshape(batch * width, -1))
            logits = out.logits
        else:
            prefix_codes = sids.reshape(batch * width, -1) + torch.tensor(layout.offsets[:t], device=device)
            start = torch.full((batch * width, 1), PAD, dtype=torch.long, device=device)
            logits = decoder.prefix_logits(torch.cat([start, prefix_codes], dim=1), enc, step_edits,
                                           codes=sids.reshape(batch * width, -1))[:, layout.position_slice(t)]
        scores, new_codes, nodes, parent = _extend(logits, layout, trie, t, nodes.reshape(-1), scores, beam,
                                                   constrained)
        width_t = scores.shape[1]
        flat_parent = (torch.arange(batch, device=device)[:, None] * width + parent).reshape(-1)
        sids = torch.cat([sids.reshape(batch * width, -1)[flat_parent].reshape(batch, width_t, -1),
                          new_codes[:, :, None]], dim=2)
        if t < n_pos - 1:
            cache = cache.select(flat_parent) if cached else None
            if width_t != width:  # new beams stay with their request, so regrouping is enough when cached
                enc = enc.beams(width_t) if cached else enc.select(flat_parent)
        width = width_t
    if constrained:
        items = torch.where(nodes >= 0, trie.leaf_item.to(device)[nodes.clamp(min=0)], -1)
    else:
        items = torch.from_numpy(trie.walk(sids.reshape(-1, n_pos).cpu().numpy())).to(device).reshape(batch, -1)
    items = torch.where(torch.isfinite(scores), items, -1)
    return _compact(items, scores, sids, k)


def _extend(logits: torch.Tensor, layout: TokenLayout, trie: PrefixTrie, t: int, nodes: torch.Tensor,
            scores: torch.Tensor | None, beam: int, constrained: bool):
    """One beam step. logits [R, K_t] of position t's tokens with R = B*W rows (W = 1 at t = 0); returns the new
    [B, W'] scores, codes, level-(t+1) nodes and (after t = 0) each new beam's parent index in [0, W)."""
    logp = F.log_softmax(logits.float(), dim=-1)  # [R, K_t]
    if constrained:
        ok = trie.allowed(t, nodes.clamp(min=0)) & (nodes >= 0)[:, None]
        logp = logp.masked_fill(~ok, float("-inf"))
    size = logp.shape[1]
    if scores is None:
        top, code = logp.topk(min(beam, size), dim=1)
        new_nodes = trie.advance(t, torch.zeros_like(code), code) if constrained else torch.zeros_like(code)
        return top, code, new_nodes
    batch, width = scores.shape
    total = (scores[:, :, None] + logp.view(batch, width, size)).view(batch, -1)
    top, flat = total.topk(min(beam, width * size), dim=1)
    parent, code = flat // size, flat % size
    if constrained:
        parent_nodes = nodes.view(batch, width).gather(1, parent)
        new_nodes = trie.advance(t, parent_nodes.clamp(min=0), code)
        new_nodes = torch.where(torch.isfinite(top) & (parent_nodes >= 0), new_nodes, -1)
    else:
        new_nodes = torch.zeros_like(code)
    return top, code, new_nodes, parent


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
    rows = torch.arange(batch, device=device).repeat_interleave(n_items)
    enc = enc.select(rows)
    code_t = torch.from_numpy(codes).to(device).repeat(batch, 1)  # [B*n, P]
    cache = DecoderCache()
    tokens = torch.full((batch * n_items,), PAD, dtype=torch.long, device=device)
    total = torch.zeros(batch * n_items, device=device)
    for t in range(layout.n_positions):
        out, cache = decoder.step(tokens, cache, enc)
        logp = F.log_softmax(out.logits[:, layout.position_slice(t)].float(), dim=-1)
        total += logp.gather(1, code_t[:, t : t + 1]).squeeze(1)
        tokens = code_t[:, t] + layout.offsets[t]
    return total.view(batch, n_items)
