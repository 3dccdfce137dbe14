"""The paper's "w/o position-wise" ablation (Table 3): conventional object-wise editing as in ROME/MEMIT.

The subject is the history alone, its last token is decoder index 0 (the start token), and the object is the whole
SID. One δ per request is added to the FFN output at (l, index 0) and optimised so that the teacher-forced decoder
predicts every SID token c_0..c_{P-1}: the later indices only see δ through self-attention to index 0 in the layers
above l. The closed-form ΔW is solved at (l, 0) and, like a weight edit, is active at every index and step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from genrecedit.edit.keys import TeacherForced
from genrecedit.edit.memory import DeltaConfig, Deltas, adam_early_stop
from genrecedit.model.decoder import DecoderCache, SteppedDecoder
from genrecedit.model.tokens import TokenLayout


def object_logits(decoder: SteppedDecoder, layout: TokenLayout, tf: TeacherForced, rows: torch.Tensor, layer: int,
                  residual0: torch.Tensor) -> list[torch.Tensor]:
    """Per-position logits (each [r, K_p]) when the residual after layer ``layer``'s FFN at index 0 is ``residual0``
    [r, d]. Layers ≤ ``layer`` are unaffected at every index; the layers above re-run at each index, attending to
    the edited K/V of earlier indices."""
    enc = tf.enc.select(rows)
    edited_kv: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # per index: (K, V) of layers above `layer`
    out = []
    for t in range(layout.n_positions):
        h = residual0 if t == 0 else tf.pre[t][layer][rows] + tf.values[t][layer][rows]
        keys, values = [], []
        for lay in range(decoder.n_layers):
            if lay <= layer:
                keys.append(tf.cache.keys[lay][rows][:, :, :t])
                values.append(tf.cache.values[lay][rows][:, :, :t])
            else:
                keys.append(torch.cat([kv[lay - layer - 1][0] for kv in edited_kv], dim=2) if t else None)
                values.append(torch.cat([kv[lay - layer - 1][1] for kv in edited_kv], dim=2) if t else None)
        cache = DecoderCache(keys, values) if t else DecoderCache()
        new_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        h = decoder.run_layers(h, t, cache, enc, layer + 1, new_kv=new_kv)
        edited_kv.append(new_kv)
        out.append(decoder.logits(h)[:, layout.position_slice(t)])
    return out


def optimise_object_deltas(decoder: SteppedDecoder, layout: TokenLayout, tf: TeacherForced, layer: int,
                           targets: torch.Tensor, z: torch.Tensor, cfg: DeltaConfig) -> Deltas:
    """δ [m, d_model] at (layer, index 0) for m requests so that all P target tokens (targets [m, P], local codes)
    become the teacher-forced argmax. The optimiser, penalty and stopping rule of ``optimise_deltas``
    (``adam_early_stop``), with the CE summed over positions (so ``stop_prob`` becomes ``stop_prob ** P``); a
    request stops when every position is right, and only unfinished requests are scored at each step."""
    base = tf.pre[0][layer] + z

    def score(rows: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = object_logits(decoder, layout, tf, rows, layer, base[rows] + delta)
        ce = sum(F.cross_entropy(lg, targets[rows, p], reduction="none") for p, lg in enumerate(logits))
        with torch.no_grad():
            hit = torch.stack([lg.argmax(1) == targets[rows, p] for p, lg in enumerate(logits)]).all(0)
        return ce, hit

    return adam_early_stop(z, cfg, score, cfg.stop_prob ** layout.n_positions if cfg.stop_prob > 0 else 0.0)
