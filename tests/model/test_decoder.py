"""The step-wise decoder must equal HF's full T5 forward, cached or not."""
from __future__ import annotations

import numpy as np
import torch

from genrecedit.model.decoder import DecoderCache, SteppedDecoder


def _hf_logits(model, layout, histories, codes, targets):
    ids, mask = layout.encoder_inputs(histories, codes)
    dec_in, _ = layout.decoder_inputs(codes[targets])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in).logits  # [B, P, V]


def test_stepped_decoder_matches_hf_forward(tiny_model, tiny_layout, tiny_codes, tiny_histories):
    targets = np.arange(len(tiny_histories))
    ref = _hf_logits(tiny_model, tiny_layout, tiny_histories, tiny_codes, targets)
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    dec_in, _ = tiny_layout.decoder_inputs(tiny_codes[targets])
    with torch.no_grad():
        enc = dec.encode(ids, mask)
        cache = DecoderCache()
        for t in range(tiny_layout.n_positions):
            out, cache = dec.step(dec_in[:, t], cache, enc)
            # two float32 summation orders (cached steps against one full pass) differ by up to ~3e-5; a wrong
            # cache or position is off by orders of magnitude more
            torch.testing.assert_close(out.logits, ref[:, t], rtol=1e-4, atol=1e-4)
    assert cache.length == tiny_layout.n_positions


def test_encoder_inputs_shapes(tiny_layout, tiny_codes, tiny_histories):
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    longest = int((tiny_histories >= 0).sum(1).max())
    assert ids.shape == (len(tiny_histories), longest * tiny_layout.n_positions + 1)
    assert mask[0].sum() == 1  # the empty history is a lone EOS
    assert (ids[:, -1] == 1).all()
    # the last item of history 2 is the 4 tokens before EOS
    last = tiny_histories[2, -1]
    assert ids[2, -5:-1].tolist() == tiny_layout.sid_tokens(tiny_codes[last]).tolist()
