"""δ optimisation (docs/method.md §5.4): the batched, masked optimiser of ``edit/memory.py`` gives every request the
δ that a plain loop over that request alone gives — δ added to ``wo``'s output at (l_p, index p) through a forward
hook on HF's full decoder, stopped by the rule as written — whatever the batch and however often the host looks at
the requests still going."""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genrecedit.edit.keys import teacher_force
from genrecedit.edit.memory import DeltaConfig, optimise_deltas
from genrecedit.model.decoder import SteppedDecoder


def _reference(model, layout, enc_hidden, enc_mask, dec_in, p: int, layer: int, target: int, z_norm: float,
               cfg: DeltaConfig) -> tuple[torch.Tensor, bool]:
    """One request alone: Adam with cosine decay on CE + penalty; stop at the first step whose target is the argmax
    with probability ≥ stop_prob, else keep the lowest-CE δ. Logits from HF's decoder over the whole prefix."""
    wo = model.decoder.block[layer].layer[2].DenseReluDense.wo
    delta = torch.zeros(model.config.d_model, dtype=enc_hidden.dtype, requires_grad=True)

    def hook(module, inputs, output):
        add = torch.zeros_like(output)
        add[:, p] = delta
        return output + add

    optim = torch.optim.Adam([delta], lr=cfg.lr)
    best, best_ce = torch.zeros_like(delta), math.inf
    handle = wo.register_forward_hook(hook)
    try:
        for step in range(cfg.steps + 1):
            hidden = model.decoder(input_ids=dec_in[None, : p + 1], encoder_hidden_states=enc_hidden[None],
                                   encoder_attention_mask=enc_mask[None]).last_hidden_state
            logits = model.lm_head(hidden[0, -1])[layout.position_slice(p)]
            ce = F.cross_entropy(logits[None], torch.tensor([target]))
            ce_value = float(ce.detach())
            if int(logits.argmax()) == target and math.exp(-ce_value) >= cfg.stop_prob:
                return delta.detach().clone(), True
            if ce_value < best_ce:
                best, best_ce = delta.detach().clone(), ce_value
            if step == cfg.steps:
                break
            for group in optim.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
            optim.zero_grad()
            (ce + cfg.norm_penalty * delta.norm() / z_norm).backward()
            optim.step()
    finally:
        handle.remove()
    return best, False


@pytest.fixture(scope="module")
def requests(tiny_model, tiny_layout, tiny_codes, tiny_histories):
    """A float64 copy of the tiny model and 18 teacher-forced requests: every history with 3 random targets."""
    model = copy.deepcopy(tiny_model).double()
    dec = SteppedDecoder(model, tiny_layout.n_positions)
    rng = np.random.default_rng(5)
    histories = np.repeat(tiny_histories, 3, axis=0)
    targets = tiny_codes[rng.integers(0, len(tiny_codes), len(histories))]
    tf = teacher_force(dec, tiny_layout, histories, targets, tiny_codes)
    return model, dec, tf, torch.from_numpy(targets)


# stop_prob 0: the paper's argmax rule; 0.8: a margin; 0.999: one that some requests never reach within 12 steps at
# lr 0.1 (they keep their lowest-CE δ); the others stop at different steps. Sites at and above the lowest layer
@pytest.mark.parametrize("p,layer,stop_prob", [(1, 0, 0.0), (2, 1, 0.8), (3, 2, 0.999), (2, 0, 0.999)])
def test_batched_deltas_equal_one_request_alone(requests, tiny_layout, stop_prob, p, layer):
    model, dec, tf, targets = requests
    cfg = DeltaConfig(lr=0.1, steps=12, stop_prob=stop_prob)
    z = tf.values[p][layer].detach()
    dec_in = tiny_layout.decoder_inputs(targets.numpy())[0]
    ref = [_reference(model, tiny_layout, tf.enc.hidden[i], tf.enc.mask[i], dec_in[i], p, layer,
                      int(targets[i, p]), float(z[i].norm().clamp_min(1e-6)), cfg) for i in range(len(z))]
    ref_delta, ref_conv = torch.stack([d for d, _ in ref]), torch.tensor([c for _, c in ref])
    if stop_prob == 0.999:
        assert 0 < int(ref_conv.sum()) < len(ref_conv)  # both branches of the rule are exercised
    # every step, every 3rd (masked rows wait for the next look), and never before the end; re-gathering at each
    # look or only below 3/4 of the rows going
    for check_every, compact_below in [(1, 0.75), (3, 1.0), (3, 0.75), (1000, 0.75)]:
        out = optimise_deltas(dec, tiny_layout, tf, p, layer, targets[:, p], z,
                              dataclasses.replace(cfg, check_every=check_every, compact_below=compact_below))
        assert torch.equal(out.converged, ref_conv), (check_every, compact_below)
        torch.testing.assert_close(out.delta, ref_delta, rtol=0, atol=1e-9)


def test_converged_deltas_meet_the_margin(requests, tiny_layout):
    """A converged δ, added at the site, puts its target at the argmax with probability ≥ stop_prob."""
    _, dec, tf, targets = requests
    p, layer = 2, 0
    z = tf.values[p][layer].detach()
    short = optimise_deltas(dec, tiny_layout, tf, p, layer, targets[:, p], z,
                            DeltaConfig(lr=0.5, steps=12, stop_prob=0.9, check_every=4))
    assert short.converged.any()
    rows = torch.arange(len(z))
    with torch.no_grad():
        h = dec.run_layers(tf.pre[p][layer] + z + short.delta, p, tf.cache_before(p), tf.enc, layer + 1)
        prob = F.softmax(dec.logits(h)[:, tiny_layout.position_slice(p)], dim=1)[rows, targets[:, p]]
        argmax = dec.logits(h)[:, tiny_layout.position_slice(p)].argmax(1) == targets[:, p]
    assert bool((argmax & (prob >= 0.9))[short.converged].all())


def test_check_every_defaults_by_device():
    assert DeltaConfig().checks(torch.device("cpu")) == 1
    assert DeltaConfig().checks(torch.device("cuda")) == 10
    assert DeltaConfig(check_every=4).checks(torch.device("cpu")) == 4
