"""Trie-constrained beam search: only catalog items, exact on a tiny model, cached == uncached."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genrecedit.model.beam import beam_search, brute_force_scores
from genrecedit.model.decoder import FFNEdit, SteppedDecoder, StepEdits
from genrecedit.model.trie import PrefixTrie


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(0, 2), st.integers(0, 2)),
                min_size=1, max_size=30, unique=True),
       st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(0, 2), st.integers(0, 2)),
                min_size=1, max_size=20))
def test_trie_walk_accepts_exactly_the_catalog(catalog, queries):
    codes = np.array(catalog, dtype=np.int64)
    trie = PrefixTrie(codes, (5, 4, 3, 3))
    found = trie.walk(np.array(queries, dtype=np.int64))
    index = {tuple(c): i for i, c in enumerate(catalog)}
    assert found.tolist() == [index.get(tuple(q), -1) for q in queries]


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12))
def test_constrained_beams_only_yield_catalog_items(tiny_model, tiny_layout, seed, beam):
    rng = np.random.default_rng(seed)
    n_items = int(rng.integers(1, 25))
    all_sids = np.stack(np.meshgrid(*[np.arange(s) for s in tiny_layout.sizes], indexing="ij"), -1).reshape(-1, 4)
    codes = all_sids[rng.choice(len(all_sids), n_items, replace=False)]
    trie = PrefixTrie(codes, tiny_layout.sizes)
    hist = rng.integers(-1, n_items, size=(3, 4))
    ids, mask = tiny_layout.encoder_inputs(np.where(hist < 0, -1, hist), codes)
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    with torch.no_grad():
        out = beam_search(dec, tiny_layout, trie, ids, mask, beam=beam, k=beam)
    for row_items, row_sids in zip(out.items.numpy(), out.sids.numpy()):
        real = row_items[row_items >= 0]
        assert len(real) == min(beam, n_items)
        assert len(set(real.tolist())) == len(real)  # distinct items
        assert (codes[real] == row_sids[: len(real)]).all()


def test_wide_constrained_beam_equals_brute_force(tiny_model, tiny_layout, tiny_codes, tiny_histories):
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    trie = PrefixTrie(tiny_codes, tiny_layout.sizes)
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    n = len(tiny_codes)
    with torch.no_grad():
        exact = brute_force_scores(dec, tiny_layout, ids, mask, tiny_codes)
        out = beam_search(dec, tiny_layout, trie, ids, mask, beam=n, k=n)
    ref_scores, ref_items = exact.sort(dim=1, descending=True)
    assert torch.equal(out.items, ref_items)
    torch.testing.assert_close(out.scores, ref_scores, rtol=1e-5, atol=1e-5)


def _edits(tiny_model, layers, seed=0):
    g = torch.Generator().manual_seed(seed)
    d_model = tiny_model.config.d_model
    d_ff = tiny_model.decoder.block[0].layer[2].DenseReluDense.wo.in_features
    return [FFNEdit(layer, torch.randn(d_model, d_ff, generator=g) * 0.5) for layer in layers]


@pytest.mark.parametrize("mode", ["none", "one_one", "all"])
@pytest.mark.parametrize("constrained", [True, False])
def test_cached_equals_uncached(tiny_model, tiny_layout, tiny_codes, tiny_histories, mode, constrained):
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    trie = PrefixTrie(tiny_codes, tiny_layout.sizes)
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    edits = _edits(tiny_model, [0, 1, 1, 2])  # positions 1 and 2 share layer 1
    schedule = None
    if mode == "one_one":
        schedule = lambda t: StepEdits([edits[t]])  # noqa: E731
    elif mode == "all":
        schedule = lambda t: StepEdits(edits, cache_edited=True)  # noqa: E731
    with torch.no_grad():
        cached = beam_search(dec, tiny_layout, trie, ids, mask, 6, 6, constrained, schedule, cached=True)
        uncached = beam_search(dec, tiny_layout, trie, ids, mask, 6, 6, constrained, schedule, cached=False)
    assert torch.equal(cached.items, uncached.items)
    assert torch.equal(cached.sids, uncached.sids)
    torch.testing.assert_close(cached.scores, uncached.scores, rtol=1e-4, atol=1e-4)


def test_edits_change_the_beams(tiny_model, tiny_layout, tiny_codes, tiny_histories):
    """Guards the test above against passing vacuously with edits that do nothing."""
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    trie = PrefixTrie(tiny_codes, tiny_layout.sizes)
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    edits = _edits(tiny_model, [0, 1, 1, 2])
    with torch.no_grad():
        plain = beam_search(dec, tiny_layout, trie, ids, mask, 6, 6)
        edited = beam_search(dec, tiny_layout, trie, ids, mask, 6, 6, edits=lambda t: StepEdits([edits[t]]))
    assert not torch.allclose(plain.scores, edited.scores)
