"""Closed form vs least squares, exact rollback, refusal of a mismatched artifact, the all-edits schedule."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genrecedit.edit.artifact import EditArtifact, EditBatch
from genrecedit.edit.gate import KeyGate
from genrecedit.edit.update import closed_form_update
from genrecedit.errors import ArtifactMismatchError
from genrecedit.model.beam import beam_search
from genrecedit.model.decoder import SteppedDecoder
from genrecedit.model.trie import PrefixTrie


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 30), st.floats(0.01, 100.0))
def test_closed_form_equals_least_squares(seed, m, lam):
    rng = np.random.default_rng(seed)
    d_ff, d_model, n0 = 12, 5, 40
    k0 = torch.from_numpy(rng.normal(size=(n0, d_ff)))
    k1 = torch.from_numpy(rng.normal(size=(m, d_ff)))
    r = torch.from_numpy(rng.normal(size=(m, d_model)))
    c0 = k0.T @ k0 / n0
    dw = closed_form_update(k1, r, c0, lam)
    # argmin_X  λ‖X K0ᵀ‖²/N0 + ‖X K1ᵀ − Rᵀ‖²  as one stacked least-squares problem
    a = torch.cat([k0 * np.sqrt(lam / n0), k1])  # [(n0+m), d_ff]
    b = torch.cat([torch.zeros(n0, d_model, dtype=torch.float64), r])
    ref = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(dw, ref, rtol=1e-8, atol=1e-8)


def test_sequential_solve_adds_previous_covariance():
    rng = np.random.default_rng(0)
    k_prev = torch.from_numpy(rng.normal(size=(6, 8)))
    k1 = torch.from_numpy(rng.normal(size=(4, 8)))
    r = torch.from_numpy(rng.normal(size=(4, 3)))
    c0 = torch.eye(8, dtype=torch.float64)
    with_prev = closed_form_update(k1, r, c0, 2.0, prev_cov=k_prev.T @ k_prev)
    manual = torch.linalg.solve(2.0 * c0 + k_prev.T @ k_prev + k1.T @ k1, r.T @ k1, left=False)
    torch.testing.assert_close(with_prev, manual)


def test_lambda_must_be_positive():
    with pytest.raises(ValueError):
        closed_form_update(torch.zeros(2, 3), torch.zeros(2, 2), torch.eye(3), 0.0)


def _batch(tiny_model, seed, name):
    g = torch.Generator().manual_seed(seed)
    d_ff = tiny_model.decoder.block[0].layer[2].DenseReluDense.wo.in_features
    dw = {p: torch.randn(tiny_model.config.d_model, d_ff, generator=g, dtype=torch.float64) * 0.2 for p in range(4)}
    cov = {p: torch.eye(d_ff, dtype=torch.float64) for p in range(4)}
    return EditBatch(name, [name], np.zeros((1, 4), np.int64), dw, cov, {"lam": 1.0})


def test_removing_newest_batch_restores_outputs_exactly(tiny_model, tiny_layout, tiny_codes, tiny_histories,
                                                        tmp_path):
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    trie = PrefixTrie(tiny_codes, tiny_layout.sizes)
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    art = EditArtifact("h", [0, 1, 2, 1], [_batch(tiny_model, 1, "a")])
    with torch.no_grad():
        one = beam_search(dec, tiny_layout, trie, ids, mask, 8, 8, edits=art.schedule())
        art.batches.append(_batch(tiny_model, 2, "b"))
        two = beam_search(dec, tiny_layout, trie, ids, mask, 8, 8, edits=art.schedule())
        art.save(tmp_path / "edits")
        loaded = EditArtifact.load(tmp_path / "edits", base_hash="h")
        loaded.remove_newest()
        back = beam_search(dec, tiny_layout, trie, ids, mask, 8, 8, edits=loaded.schedule())
        base = beam_search(dec, tiny_layout, trie, ids, mask, 8, 8)
        loaded.remove_newest()
        assert loaded.schedule() is None
    assert not torch.equal(one.scores, two.scores)
    assert torch.equal(one.items, back.items) and torch.equal(one.scores, back.scores)
    for p in range(4):
        assert torch.equal(art.batches[0].delta_w[p], loaded_first(tmp_path, p))
    assert not torch.equal(base.scores, one.scores)


def loaded_first(tmp_path, p):
    return EditArtifact.load(tmp_path / "edits").batches[0].delta_w[p]


def test_mismatched_artifact_is_refused(tiny_model, tmp_path):
    art = EditArtifact("hash-of-model-a", [0, 0, 0, 0], [_batch(tiny_model, 1, "a")])
    art.save(tmp_path / "edits")
    with pytest.raises(ArtifactMismatchError, match="base model"):
        EditArtifact.load(tmp_path / "edits", base_hash="hash-of-model-b")
    with pytest.raises(ArtifactMismatchError):
        EditArtifact.load(tmp_path / "nothing-here")


@pytest.mark.parametrize("constrained", [True, False])
@pytest.mark.parametrize("batches", ["one", "two", "gated"])
def test_all_edits_schedule_decodes_the_same_cached_and_uncached(tiny_model, tiny_layout, tiny_codes, tiny_histories,
                                                                 constrained, batches):
    """``schedule("all")`` fires every position's ΔW at every step and caches the edited stream: the KV-cached beam
    search and the uncached reference (HF's decoder over the whole prefix, edits hooked at every index) agree."""
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    trie = PrefixTrie(tiny_codes, tiny_layout.sizes)
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    art = EditArtifact("h", [0, 1, 2, 1], [_batch(tiny_model, 1, "a")])
    if batches != "one":
        art.batches.append(_batch(tiny_model, 2, "b"))
    if batches == "gated":  # a gate that lets about half the keys through, on one batch's position 1
        g = torch.Generator().manual_seed(5)
        d_ff = art.batches[1].delta_w[1].shape[1]
        art.batches[1].gates[1] = KeyGate(torch.randn(d_ff, generator=g), torch.tensor(0.0))
    schedule = art.schedule("all")
    every = schedule(0)
    assert every.cache_edited and all(schedule(t) is every for t in range(tiny_layout.n_positions))
    # every position's ΔW, once: summed over the batches, or each batch's own where a gate sits on one
    assert len(every.edits) == (4 if batches != "gated" else 5)
    if batches != "gated":
        for p, e in enumerate(every.edits):
            assert e.layer == art.layers[p] and torch.equal(e.delta_w, art.total_delta(p))
    wide = len(tiny_codes)
    with torch.no_grad():
        cached = beam_search(dec, tiny_layout, trie, ids, mask, wide, wide, constrained, schedule)
        uncached = beam_search(dec, tiny_layout, trie, ids, mask, wide, wide, constrained, schedule, cached=False)
        one_one = beam_search(dec, tiny_layout, trie, ids, mask, wide, wide, constrained, art.schedule("one_one"))
    assert torch.equal(cached.items, uncached.items) and torch.equal(cached.sids, uncached.sids)
    torch.testing.assert_close(cached.scores, uncached.scores, rtol=1e-4, atol=1e-4)
    # not vacuous: firing every ΔW at every step (and caching that stream) scores otherwise than one-one triggering
    assert not torch.allclose(cached.scores, one_one.scores)
