"""An edit of position p fires at decoder index p, layer l_p, and nowhere else (docs/method.md §5 conventions, §5.6)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genrecedit.edit.artifact import EditArtifact, EditBatch
from genrecedit.edit.keys import teacher_force
from genrecedit.model.decoder import DecoderCache, SteppedDecoder
from genrecedit.model.tokens import PAD


def _artifact(tiny_model, layers, positions, seed=0) -> EditArtifact:
    g = torch.Generator().manual_seed(seed)
    d_model = tiny_model.config.d_model
    d_ff = tiny_model.decoder.block[0].layer[2].DenseReluDense.wo.in_features
    dw = {p: torch.randn(d_model, d_ff, generator=g, dtype=torch.float64) * 0.3 for p in positions}
    batch = EditBatch("b0", ["x"], np.zeros((1, len(layers)), np.int64), dw, {})
    return EditArtifact("base", list(layers), [batch])


def _teacher_forced_steps(dec, tiny_layout, ids, mask, dec_in, schedule):
    """Per step t: (logits [B, V], cache after t, captured plain keys per layer)."""
    enc = dec.encode(ids, mask)
    cache = DecoderCache()
    out = []
    for t in range(tiny_layout.n_positions):
        step_out, cache = dec.step(dec_in[:, t], cache, enc, schedule(t) if schedule else None, capture=True)
        out.append((step_out, cache))
    return enc, out


@pytest.mark.parametrize("p,layer", [(0, 0), (1, 2), (2, 1), (3, 2)])
def test_only_index_p_and_layers_above_lp_change(tiny_model, tiny_layout, tiny_codes, tiny_histories, p,
                                                 layer):
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    layers = [0, 0, 0, 0]
    layers[p] = layer
    art = _artifact(tiny_model, layers, positions=[p])
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    targets = tiny_codes[np.arange(len(tiny_histories))]
    dec_in, _ = tiny_layout.decoder_inputs(targets)
    with torch.no_grad():
        enc_b, base = _teacher_forced_steps(dec, tiny_layout, ids, mask, dec_in, None)
        enc_e, edited = _teacher_forced_steps(dec, tiny_layout, ids, mask, dec_in, art.schedule("one_one"))
    assert torch.equal(enc_b.hidden, enc_e.hidden)  # the encoder is never edited
    for t in range(tiny_layout.n_positions):
        (b_out, b_cache), (e_out, e_cache) = base[t], edited[t]
        # the cache (every index's K/V at every layer) stays unedited, so earlier indices are bit-identical
        for kb, ke in zip(b_cache.keys + b_cache.values, e_cache.keys + e_cache.values):
            assert torch.equal(kb, ke)
        # keys of every layer (the shared part up to l_p and the plain stream above) are bit-identical
        for kb, ke in zip(b_out.keys, e_out.keys):
            assert torch.equal(kb, ke)
        if t != p:
            assert torch.equal(b_out.logits, e_out.logits), f"edit of position {p} leaked into step {t}"
        else:
            assert not torch.allclose(b_out.logits, e_out.logits)
    # the FFN output at (l_p, p) differs by exactly ΔW_p k: rerunning the layers above l_p from
    # pre + z + ΔW k reproduces the edited logits
    tf = teacher_force(dec, tiny_layout, tiny_histories, targets, tiny_codes)
    k = tf.keys[p][layer]
    dw = art.total_delta(p)
    with torch.no_grad():
        h = dec.run_layers(tf.pre[p][layer] + tf.values[p][layer] + k @ dw.T, p, tf.cache_before(p), tf.enc,
                           layer + 1)
        torch.testing.assert_close(dec.logits(h), edited[p][0].logits, rtol=1e-6, atol=1e-6)
        # and with the same ΔW placed one layer off (or at another index) the logits would differ
        if layer + 1 < dec.n_layers:
            off = dec.run_layers(tf.pre[p][layer + 1] + tf.values[p][layer + 1] + tf.keys[p][layer + 1] @ dw.T,
                                 p, tf.cache_before(p), tf.enc, layer + 2)
            assert not torch.allclose(dec.logits(off), edited[p][0].logits)


def test_hf_reference_with_hook_agrees(tiny_model, tiny_layout, tiny_codes, tiny_histories):
    """Independent oracle: HF's own decoder over the prefix with a hook on wo of layer l_p at index p only."""
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    art = _artifact(tiny_model, [1, 2, 0, 1], positions=[0, 1, 2, 3], seed=4)
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    dec_in, _ = tiny_layout.decoder_inputs(tiny_codes[np.arange(len(tiny_histories))])
    sched = art.schedule("one_one")
    with torch.no_grad():
        enc, edited = _teacher_forced_steps(dec, tiny_layout, ids, mask, dec_in, sched)
        for t in range(tiny_layout.n_positions):
            ref = dec.prefix_logits(dec_in[:, : t + 1], enc, sched(t))
            torch.testing.assert_close(edited[t][0].logits, ref, rtol=1e-4, atol=1e-4)


def test_teacher_force_start_token(tiny_model, tiny_layout, tiny_codes, tiny_histories):
    """Position p's request uses decoder input [start, c_0..c_{p-1}]: index 0 always sees only PAD."""
    dec_in, labels = tiny_layout.decoder_inputs(tiny_codes[:3])
    assert (dec_in[:, 0] == PAD).all()
    assert torch.equal(dec_in[:, 1:], labels[:, :-1])
