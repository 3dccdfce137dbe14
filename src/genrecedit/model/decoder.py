"""A step-wise, KV-cached view of the T5 decoder that exposes every FFN key and accepts FFN edits.

HF's ``generate`` hides the pieces GenRecEdit needs (the key at (layer, index), an edit that fires at one index
only, an unedited cache) and breaks on encoder/decoder depth mismatch in transformers 5.x (docs/method.md §3.1), so
decoding runs here, layer by layer over the HF modules' own weights. ``tests/model`` checks it against HF's full
forward.

Conventions (docs/method.md §5): decoder index t holds [start, c_0 .. c_{P-2}][t]; the logits at index t predict SID
position t. In layer l the FFN computes key k = silu(wi_0 x) * wi_1 x (the input of ``wo``) and value z = wo k.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import T5ForConditionalGeneration


@dataclass
class FFNEdit:
    """ΔW [d_model, d_ff] added to the FFN output at one decoder layer: z' = wo(k) + ΔW k.

    gate: optional ``[B, d_ff] keys -> [B] bool``; rows where it is False are left unedited (probe gate).
    prefixes: optional sorted int64 ``prefix_keys`` of the SID prefixes c_0..c_{t-1} after which the edit may fire
    (prefix-consistent triggering): a row whose decoded prefix is none of them is left unedited, since no item this
    edit teaches can follow it. Needs the decoded prefix (``step(prefix=...)``).
    """

    layer: int
    delta_w: torch.Tensor
    gate: Callable[[torch.Tensor], torch.Tensor] | None = None
    prefixes: torch.Tensor | None = None


PREFIX_CODE_BITS = 15  # codes < 2^15 and prefixes of ≤ 4 codes pack into one int64


def prefix_keys(codes: torch.Tensor) -> torch.Tensor:
    """SID prefixes [R, t] (codes, not token ids) -> one int64 per row, injective for codes < 2^15 and t ≤ 4."""
    t = codes.shape[1]
    if t * PREFIX_CODE_BITS > 62:
        raise ValueError(f"prefix-consistent triggering packs at most {62 // PREFIX_CODE_BITS} codes, got {t}")
    if codes.numel() and int(codes.max()) >= 1 << PREFIX_CODE_BITS:
        raise ValueError(f"SID codes must be < {1 << PREFIX_CODE_BITS} for prefix-consistent triggering")
    keys = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
    for i in range(t):
        keys = (keys << PREFIX_CODE_BITS) | codes[:, i].long()
    return keys


@dataclass
class StepEdits:
    """The edits that fire at one decoding step.

    edits: applied to the current index only. ``cache_edited`` False (one-one triggering) keeps the KV cache unedited
    so that later steps see exactly what an uncached recomputation with no edit at earlier indices sees; True
    (every edit active everywhere, the ablation) caches the edited stream.
    """

    edits: list[FFNEdit]
    cache_edited: bool = False


class EncodedBatch:
    """Encoder output prepared for decoding, for N decoder rows.

    hidden [n, S, d]; mask [n, S] (1 = real token); mask_bias [n, 1, 1, S]; cross_kv: per decoder layer (K, V),
    each [n, H, S, d_kv]. Two views avoid copying these per beam: ``select(rows)`` gathers rows lazily, one tensor
    (one layer's K/V) at a time on first use, so a caller that runs only the upper layers (δ optimisation) gathers
    only those; ``beams(width)`` lets each of the n encoder rows serve ``width`` consecutive decoder rows
    (N = n · width) without copying, and ``SteppedDecoder.attention`` attends for the whole group in one matmul.
    """

    def __init__(self, hidden: torch.Tensor, mask: torch.Tensor, mask_bias: torch.Tensor,
                 cross_kv: list[tuple[torch.Tensor, torch.Tensor]], rows: torch.Tensor | None = None,
                 group: int = 1) -> None:
        self._source = (hidden, mask, mask_bias, cross_kv)
        self._rows = rows  # encoder rows to gather (None: all, in order)
        self.group = group
        self._gathered: dict[object, torch.Tensor] = {}

    def _take(self, key: object, tensor: torch.Tensor) -> torch.Tensor:
        if self._rows is None:
            return tensor
        if key not in self._gathered:
            self._gathered[key] = tensor[self._rows]
        return self._gathered[key]

    @property
    def hidden(self) -> torch.Tensor:
        return self._take("hidden", self._source[0])

    @property
    def mask(self) -> torch.Tensor:
        return self._take("mask", self._source[1])

    @property
    def mask_bias(self) -> torch.Tensor:
        return self._take("mask_bias", self._source[2])

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention (K, V) of one decoder layer, each [n, H, S, d_kv]."""
        k, v = self._source[3][layer]
        return self._take(("k", layer), k), self._take(("v", layer), v)

    def select(self, rows: torch.Tensor) -> "EncodedBatch":
        """Decoder rows (e.g. ``arange(B).repeat_interleave(W)`` for beams) as a batch of their own (group 1)."""
        enc_rows = rows // self.group if self.group > 1 else rows
        if self._rows is not None:
            enc_rows = self._rows[enc_rows]
        return EncodedBatch(*self._source, rows=enc_rows)

    def beams(self, width: int) -> "EncodedBatch":
        """The same n encoder rows, each serving ``width`` consecutive decoder rows (beams of one request)."""
        batch = EncodedBatch(*self._source, rows=self._rows, group=width)
        batch._gathered = self._gathered  # same rows: share what was gathered
        return batch


@dataclass
class DecoderCache:
    """Self-attention K/V of the indices decoded so far: per layer, [B, H, t, d_kv]."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        return 0 if not self.keys else int(self.keys[0].shape[2])

    def select(self, rows: torch.Tensor) -> "DecoderCache":
        return DecoderCache([k[rows] for k in self.keys], [v[rows] for v in self.values])


@dataclass
class StepOutput:
    """logits [B, V]; keys/values: per layer [B, d_ff] / [B, d_model] FFN key and (unedited) value at this index,
    only when captured; pre_ffn: per layer the residual stream entering the FFN sub-layer [B, d]; base_logits: the
    unedited model's logits (same columns) when asked for and an edit fired at this index, else None."""

    logits: torch.Tensor
    keys: list[torch.Tensor] | None = None
    values: list[torch.Tensor] | None = None
    pre_ffn: list[torch.Tensor] | None = None
    base_logits: torch.Tensor | None = None


class SteppedDecoder:
    """Encoder once, then the decoder one index at a time with a KV cache, over a trained T5's weights."""

    def __init__(self, model: T5ForConditionalGeneration, max_length: int) -> None:
        self.model = model
        self.blocks = list(model.decoder.block)
        self.n_layers = len(self.blocks)
        attn0 = self.blocks[0].layer[0].SelfAttention
        self.n_heads = attn0.n_heads
        self.d_kv = attn0.key_value_proj_dim
        self.max_length = max_length
        with torch.no_grad():
            self._self_bias = attn0.compute_bias(max_length, max_length)  # [1, H, D, D]

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, H*dk] -> [B, H, T, dk]"""
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_kv).transpose(1, 2)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncodedBatch:
        """[B, S] ids and mask -> encoder states plus every decoder layer's cross-attention K/V."""
        hidden = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        cross = []
        for block in self.blocks:
            attn = block.layer[1].EncDecAttention
            cross.append((self._split_heads(attn.k(hidden)), self._split_heads(attn.v(hidden))))
        return EncodedBatch(hidden, attention_mask, mask_bias, cross)

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """[B] token ids -> [B, d] decoder input embeddings."""
        return self.model.decoder.embed_tokens(token_ids)

    def attention(self, layer: int, h: torch.Tensor, t: int, cache: DecoderCache,
                  enc: EncodedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self- then cross-attention sub-layers of ``layer`` for index t.

        h [B, d] -> (h after both sub-layers [B, d], this index's self-attn K and V [B, H, 1, dk]).
        Attends to ``cache``'s indices < t of this layer plus index t itself.
        """
        block = self.blocks[layer]
        sa = block.layer[0]
        x = sa.layer_norm(h)[:, None, :]
        q = self._split_heads(sa.SelfAttention.q(x))
        k_new = self._split_heads(sa.SelfAttention.k(x))
        v_new = self._split_heads(sa.SelfAttention.v(x))
        if cache.length:
            keys = torch.cat([cache.keys[layer], k_new], dim=2)
            values = torch.cat([cache.values[layer], v_new], dim=2)
        else:
            keys, values = k_new, v_new
        scores = q @ keys.transpose(2, 3) + self._self_bias[:, :, t : t + 1, : t + 1]
        out = (F.softmax(scores, dim=-1) @ values).transpose(1, 2).reshape(h.shape[0], -1)
        h = h + sa.SelfAttention.o(out)
        return self._cross_attention(layer, h, enc), k_new, v_new

    def _cross_attention(self, layer: int, h: torch.Tensor, enc: EncodedBatch) -> torch.Tensor:
        """Cross-attention sub-layer: h [N, d] -> [N, d]. With ``enc.group`` = g > 1 the N = n·g rows' queries
        are grouped per encoder row, [n, H, g, dk] @ [n, H, dk, S], instead of copying K/V g times."""
        ca = self.blocks[layer].layer[1]
        attn = ca.EncDecAttention
        ck, cv = enc.layer_kv(layer)
        g = enc.group
        q = attn.q(ca.layer_norm(h))  # [N, H*dk]
        n = q.shape[0] // g
        q = q.view(n, g, self.n_heads, self.d_kv).transpose(1, 2)  # [n, H, g, dk]
        scores = q @ ck.transpose(2, 3) + enc.mask_bias  # [n, H, g, S]
        out = (F.softmax(scores, dim=-1) @ cv).transpose(1, 2).reshape(h.shape[0], -1)  # [N, H*dk]
        return h + attn.o(out)

    def ffn_key(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """[B, d] residual entering the FFN sub-layer -> [B, d_ff] key (the input of ``wo``)."""
        ff = self.blocks[layer].layer[2]
        dense = ff.DenseReluDense
        x = ff.layer_norm(h)
        return dense.act(dense.wi_0(x)) * dense.wi_1(x)

    def ffn_value(self, layer: int, key: torch.Tensor) -> torch.Tensor:
        """[B, d_ff] key -> [B, d_model] value z = wo k."""
        return self.blocks[layer].layer[2].DenseReluDense.wo(key)

    def logits(self, h: torch.Tensor, columns: slice | None = None) -> torch.Tensor:
        """[B, d] residual after the last layer -> [B, V] logits, or only ``columns`` of them ([B, len]): a beam
        step needs one position's tokens, a quarter of the head's work."""
        x = self.model.decoder.final_layer_norm(h)
        if columns is None:
            return self.model.lm_head(x)
        return F.linear(x, self.model.lm_head.weight[columns])

    def run_layers(self, h: torch.Tensor, t: int, cache: DecoderCache, enc: EncodedBatch, start: int,
                   edits: list[FFNEdit] | None = None, new_kv: list | None = None,
                   row_keys: torch.Tensor | None = None) -> torch.Tensor:
        """Layers ``start..L-1`` at index t from residual h [B, d] -> final residual [B, d].

        Used by δ optimisation to run only the layers above the edit layer. ``new_kv``, when given, collects each
        layer's (K, V) of index t. ``row_keys``: ``prefix_keys`` of each row's decoded prefix, for prefix-gated
        edits.
        """
        by_layer: dict[int, list[FFNEdit]] = {}
        for e in edits or []:
            by_layer.setdefault(e.layer, []).append(e)
        for layer in range(start, self.n_layers):
            h, k_new, v_new = self.attention(layer, h, t, cache, enc)
            if new_kv is not None:
                new_kv.append((k_new, v_new))
            key = self.ffn_key(layer, h)
            h = h + self.ffn_value(layer, key)
            delta = _edit_delta(by_layer.get(layer, ()), key, row_keys)
            if delta is not None:
                h = h + delta
        return h

    def step(self, token_ids: torch.Tensor, cache: DecoderCache, enc: EncodedBatch,
             edits: StepEdits | None = None, capture: bool = False,
             columns: slice | None = None, prefix: torch.Tensor | None = None,
             base_logits: bool = False) -> tuple[StepOutput, DecoderCache]:
        """Decode index t = cache.length for tokens [B]; returns logits [B, V] (only ``columns`` of them when
        given) and the cache extended by index t.

        One-one edits (``cache_edited`` False): the plain stream fills the cache and is what ``capture`` reports;
        at the lowest edit layer an edited stream forks off and runs the layers above it for the logits only
        (layers at or below the edit layer are shared by both). ``cache_edited`` True: a single, edited stream
        (the all-edits-active ablation). ``prefix`` [B, t]: the SID codes decoded before index t, which
        prefix-gated edits (``FFNEdit.prefixes``) need. ``base_logits``: also return the plain stream's logits when
        an edited stream forked (one-one edits; they cost one more output projection).
        """
        t = cache.length
        active = list(edits.edits) if edits else []
        row_keys = _row_keys(active, prefix, t)
        single_stream = bool(edits and edits.cache_edited)
        keys, values, pre = ([], [], []) if capture else (None, None, None)
        new_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        h = self.embed(token_ids)
        h_edit: torch.Tensor | None = None
        for layer in range(self.n_layers):
            h, k_new, v_new = self.attention(layer, h, t, cache, enc)
            new_kv.append((k_new, v_new))
            key = self.ffn_key(layer, h)
            z = self.ffn_value(layer, key)
            if capture:
                pre.append(h)
                keys.append(key)
                values.append(z)
            delta = _edit_delta([e for e in active if e.layer == layer], key, row_keys) if h_edit is None else None
            if single_stream:
                h = h + z if delta is None else h + z + delta
                continue
            if delta is not None:
                h_edit = self.run_layers(h + z + delta, t, cache, enc, layer + 1, active, row_keys=row_keys)
            h = h + z
        out = StepOutput(self.logits(h if h_edit is None else h_edit, columns), keys, values, pre,
                         self.logits(h, columns) if base_logits and h_edit is not None else None)
        return out, _extend(cache, new_kv)


    def prefix_logits(self, prefix: torch.Tensor, enc: EncodedBatch, edits: StepEdits | None = None,
                      codes: torch.Tensor | None = None) -> torch.Tensor:
        """Reference semantics without a cache: HF's decoder over the whole prefix [B, t+1] -> logits [B, V] at t.

        Edits fire at the last index only (one-one) or at every index (``cache_edited``), through forward hooks on
        ``wo``: an implementation independent of ``step``, so tests can hold the cached path against it. ``codes``
        [B, t]: the SID codes of the prefix, for prefix-gated edits.
        """
        t = prefix.shape[1] - 1
        handles = []
        row_keys = _row_keys(list(edits.edits) if edits else [], codes, t)
        # rows whose prefix opens each prefix-gated edit
        allowed = {id(e): torch.isin(row_keys, e.prefixes) for e in (edits.edits if edits else [])
                   if e.prefixes is not None}
        for e in (edits.edits if edits else []):
            wo = self.blocks[e.layer].layer[2].DenseReluDense.wo
            every_index = edits.cache_edited

            def hook(module, inputs, output, e=e, every_index=every_index):
                key = inputs[0]  # [B, T, d_ff]
                add = torch.zeros_like(output)
                idx = slice(None) if every_index else slice(t, t + 1)
                k = key[:, idx]
                d = k @ e.delta_w.T.to(k.dtype)
                if e.gate is not None:
                    d = d * e.gate(k.reshape(-1, k.shape[-1])).reshape(k.shape[:-1]).to(d.dtype)[..., None]
                if id(e) in allowed:
                    d = d * allowed[id(e)].to(d.dtype)[:, None, None]
                add[:, idx] = d
                return output + add

            handles.append(wo.register_forward_hook(hook))
        try:
            hidden = self.model.decoder(input_ids=prefix, encoder_hidden_states=enc.hidden,
                                        encoder_attention_mask=enc.mask).last_hidden_state
        finally:
            for h in handles:
                h.remove()
        return self.model.lm_head(hidden[:, -1])


def edit_delta(edits: list[FFNEdit], key: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor | None:
    """Σ ΔW k that ``edits`` add for keys [B, d_ff] of rows whose decoded prefix is ``prefix`` [B, t] (SID codes;
    prefix-gated edits need it), exactly as decoding applies them; None when nothing fires."""
    if prefix is None and any(e.prefixes is not None for e in edits):
        raise ValueError("a prefix-gated edit needs the decoded prefix (the SID codes before this index)")
    return _edit_delta(edits, key, _row_keys(edits, prefix, 0 if prefix is None else prefix.shape[1]))


def _row_keys(edits: list[FFNEdit], prefix: torch.Tensor | None, t: int) -> torch.Tensor | None:
    """``prefix_keys`` of the rows' decoded prefixes when some edit is prefix-gated, else None."""
    if not any(e.prefixes is not None for e in edits):
        return None
    if prefix is None or prefix.shape[1] != t:
        raise ValueError(f"a prefix-gated edit at index {t} needs the {t} codes decoded before it (step(prefix=...))")
    return prefix_keys(prefix)


def _edit_delta(edits, key: torch.Tensor, row_keys: torch.Tensor | None = None) -> torch.Tensor | None:
    """Σ ΔW k over the given edits (rows that a gate or a prefix gate closes left at zero) or None when there is
    nothing to add."""
    total = None
    for e in edits:
        if e.prefixes is None:
            d = _gated(e, key)
            total = d if total is None else total + d
            continue
        rows = torch.isin(row_keys, e.prefixes).nonzero().squeeze(1)  # only the open rows: a small share of beams
        if not len(rows):
            continue
        if total is None:
            total = torch.zeros(key.shape[0], e.delta_w.shape[0], dtype=key.dtype, device=key.device)
        total.index_add_(0, rows, _gated(e, key[rows]))
    return total


def _gated(e: FFNEdit, key: torch.Tensor) -> torch.Tensor:
    """ΔW k for keys [B, d_ff], rows the probe gate closes set to zero."""
    d = key @ e.delta_w.T.to(key.dtype)
    return d if e.gate is None else d * e.gate(key).to(d.dtype)[:, None]


def _extend(cache: DecoderCache, new_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> DecoderCache:
    if not cache.length:
        return DecoderCache([k for k, _ in new_kv], [v for _, v in new_kv])
    return DecoderCache([torch.cat([c, k], dim=2) for c, (k, _) in zip(cache.keys, new_kv)],
                        [torch.cat([c, v], dim=2) for c, (_, v) in zip(cache.values, new_kv)])
