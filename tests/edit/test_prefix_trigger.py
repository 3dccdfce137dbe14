"""Prefix-consistent triggering (``trigger=prefix``): a batch's ΔW_t fires at step t only on rows whose decoded
prefix c_0..c_{t-1} begins one of the batch's items; the edited items score exactly as under one-one triggering and
every other row is left as the base model scores it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genrecedit.edit.artifact import EditArtifact, EditBatch
from genrecedit.model.beam import beam_search
from genrecedit.model.decoder import DecoderCache, SteppedDecoder, prefix_keys
from genrecedit.model.trie import PrefixTrie


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_prefix_keys_injective(t, n, seed):
    rng = np.random.default_rng(seed)
    codes = torch.from_numpy(rng.integers(0, 1 << 15, size=(n, t)))
    keys = prefix_keys(codes)
    distinct_rows = len({tuple(r) for r in codes.tolist()})
    assert len(set(keys.tolist())) == distinct_rows


def test_prefix_keys_refuses_what_it_cannot_pack():
    with pytest.raises(ValueError, match="at most"):
        prefix_keys(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="< 32768"):
        prefix_keys(torch.full((2, 2), 1 << 15, dtype=torch.long))


def _teacher_forced_logits(dec, layout, ids, mask, targets, schedule):
    enc = dec.encode(ids, mask)
    dec_in, _ = layout.decoder_inputs(targets)
    tgt = torch.from_numpy(targets)
    cache, out = DecoderCache(), []
    for t in range(layout.n_positions):
        step, cache = dec.step(dec_in[:, t], cache, enc, schedule(t) if schedule else None, prefix=tgt[:, :t])
        out.append(step.logits)
    return out


def test_prefix_gate_fires_only_after_edited_prefixes(tiny_model, random_artifact, tiny_layout, tiny_codes,
                                                      tiny_histories):
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    edited = np.array([0, 1])
    art = random_artifact(edited, tiny_codes)
    n = len(tiny_histories)
    targets = tiny_codes[np.arange(n) % len(tiny_codes)]
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    with torch.no_grad():
        base = _teacher_forced_logits(dec, tiny_layout, ids, mask, targets, None)
        one = _teacher_forced_logits(dec, tiny_layout, ids, mask, targets, art.schedule("one_one"))
        pre = _teacher_forced_logits(dec, tiny_layout, ids, mask, targets, art.schedule("prefix"))
    torch.testing.assert_close(pre[0], one[0])  # position 0 has no prefix: it fires as under one-one
    checked = {True: 0, False: 0}
    for t in range(1, tiny_layout.n_positions):
        prefixes = {tuple(c[:t]) for c in tiny_codes[edited]}
        for row in range(n):
            match = tuple(targets[row, :t]) in prefixes
            checked[match] += 1
            if match:
                torch.testing.assert_close(pre[t][row], one[t][row])
            else:
                assert torch.equal(pre[t][row], base[t][row]), f"step {t} row {row}: gate open on a foreign prefix"
                assert not torch.allclose(one[t][row], base[t][row])
    assert checked[True] and checked[False]  # both kinds of rows were exercised


def test_prefix_trigger_beams_cached_equal_reference_and_keep_edited_scores(tiny_model, random_artifact, tiny_layout,
                                                                            tiny_codes, tiny_histories):
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    trie = PrefixTrie(tiny_codes, tiny_layout.sizes)
    art = random_artifact(np.array([2, 5]), tiny_codes, seed=3)
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    wide = len(tiny_codes)  # a beam as wide as the catalog ranks every item
    with torch.no_grad():
        cached = beam_search(dec, tiny_layout, trie, ids, mask, wide, wide, edits=art.schedule("prefix"))
        ref = beam_search(dec, tiny_layout, trie, ids, mask, wide, wide, edits=art.schedule("prefix"), cached=False)
        one = beam_search(dec, tiny_layout, trie, ids, mask, wide, wide, edits=art.schedule("one_one"))
    assert torch.equal(cached.items, ref.items)
    torch.testing.assert_close(cached.scores, ref.scores, rtol=1e-4, atol=1e-4)
    for row in range(ids.shape[0]):
        for item in (2, 5):
            s_pre = cached.scores[row][cached.items[row] == item]
            s_one = one.scores[row][one.items[row] == item]
            torch.testing.assert_close(s_pre, s_one, rtol=1e-5, atol=1e-5)


def test_prefix_gated_step_needs_the_prefix(tiny_model, random_artifact, tiny_layout, tiny_codes,
                                            tiny_histories):
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    sched = random_artifact(np.array([0]), tiny_codes).schedule("prefix")
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    dec_in, _ = tiny_layout.decoder_inputs(tiny_codes[: len(tiny_histories)])
    with torch.no_grad():
        enc = dec.encode(ids, mask)
        _, cache = dec.step(dec_in[:, 0], DecoderCache(), enc, sched(0))
        with pytest.raises(ValueError, match="needs the 1 codes"):
            dec.step(dec_in[:, 1], cache, enc, sched(1))


def test_unknown_trigger_mode_refused(random_artifact, tiny_codes):
    with pytest.raises(ValueError, match="unknown trigger"):
        random_artifact(np.array([0]), tiny_codes).schedule("everywhere")


def test_edit_delta_fires_each_batch_only_after_its_own_prefixes(tiny_model, tiny_codes):
    """What a later batch is solved against: each earlier batch's ΔW k where the request's prefix is one of that
    batch's, zero elsewhere (``edit_delta`` is the decoder's own rule)."""
    from genrecedit.model.decoder import edit_delta

    g = torch.Generator().manual_seed(5)
    d_model = tiny_model.config.d_model
    d_ff = tiny_model.decoder.block[0].layer[2].DenseReluDense.wo.in_features
    batches = [EditBatch(f"b{i}", [f"i{j}" for j in items], tiny_codes[items],
                         {2: torch.randn(d_model, d_ff, generator=g, dtype=torch.float64)}, {})
               for i, items in enumerate((np.array([0, 1]), np.array([2, 3])))]
    art = EditArtifact("base", [0, 0, 1, 0], batches)
    edits = art.schedule("prefix")(2).edits
    rows = np.array([0, 1, 2, 3, 4, 5])
    prefix = torch.from_numpy(tiny_codes[rows, :2])
    key = torch.randn(len(rows), d_ff, generator=g)
    got = edit_delta(edits, key, prefix)
    for r, row in enumerate(rows):
        expected = torch.zeros(d_model)
        for b in batches:
            if any((tiny_codes[row, :2] == c[:2]).all() for c in b.sids):
                expected += (key[r] @ b.delta_w[2].float().T)
        torch.testing.assert_close(got[r], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs the decoded prefix"):
        edit_delta(edits, key)
