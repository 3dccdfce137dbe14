"""The key second moment C0 = (1/N0) Σ k kᵀ (docs/method.md §5.5) and its on-disk cache: C0 is a mean over the N0
training keys, and a cached C0 is reused exactly when base model, training samples, site and N0 are all the same."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from genrecedit.data.dataset import CaseSet
from genrecedit.edit import keys as keys_module
from genrecedit.edit.editor import ColdItemEditor, EditConfig
from genrecedit.edit.keys import SecondMoment, c0_cache_key, second_moments, teacher_force, train_fingerprint
from genrecedit.model.decoder import SteppedDecoder
from genrecedit.model.recommender import Recommender
from genrecedit.model.tokens import length_batches
from genrecedit.model.tiger import weights_hash

SITES = [(1, 2), (0, 0)]


def test_second_moment_is_the_mean_of_outer_products_over_all_updates():
    rng = np.random.default_rng(0)
    keys = torch.from_numpy(rng.normal(size=(7, 5))).float()
    moment = SecondMoment(5)
    moment.update(keys[:3])
    moment.update(keys[3:])
    k = keys.double()
    by_hand = sum(torch.outer(k[i], k[i]) for i in range(7)) / 7
    assert moment.count == 7 and moment.mean.dtype == torch.float64
    torch.testing.assert_close(moment.mean, by_hand, rtol=1e-12, atol=1e-12)


def _inputs(tiny_histories, tiny_codes):
    return tiny_histories, tiny_codes[: len(tiny_histories)]


def test_second_moments_divide_the_training_keys_outer_products_by_n0(tiny_model, tiny_layout, tiny_codes,
                                                                       tiny_histories):
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    histories, targets = _inputs(tiny_histories, tiny_codes)
    # batch_size 4: two length batches, so the mean is accumulated over more than one update
    c0, cached = second_moments(dec, tiny_layout, histories, targets, tiny_codes, SITES, "h", "fp", None,
                                batch_size=4)
    assert not cached
    # the same keys by hand (teacher-forced over the same batches, so bit-identical), averaged in float64
    forced = [teacher_force(dec, tiny_layout, histories[rows], targets[rows], tiny_codes)
              for rows in length_batches(histories, 4)]
    n0 = len(histories)
    for layer, p in SITES:
        k = torch.cat([tf.keys[p][layer] for tf in forced]).double()
        assert k.shape[0] == n0
        by_hand = sum(torch.outer(k[i], k[i]) for i in range(n0)) / n0
        assert c0[(layer, p)].dtype == torch.float64 and c0[(layer, p)].shape == by_hand.shape
        # 1/N0, not the plain sum and not 1/(N0 − 1): those are off by a factor 6 and 6/5
        torch.testing.assert_close(c0[(layer, p)], by_hand, rtol=1e-12, atol=1e-12)


def test_cache_key_changes_with_each_component_and_only_then():
    base = ("model-a", "train-a", (1, 2), 300)
    changed = [("model-b", "train-a", (1, 2), 300), ("model-a", "train-b", (1, 2), 300),
               ("model-a", "train-a", (0, 2), 300), ("model-a", "train-a", (1, 3), 300),
               ("model-a", "train-a", (1, 2), 299)]
    keys = [c0_cache_key(*base)] + [c0_cache_key(*c) for c in changed]
    assert len(set(keys)) == len(keys)
    assert c0_cache_key(*base) == keys[0]


def test_train_fingerprint_identifies_histories_and_targets(tiny_histories):
    targets = np.arange(len(tiny_histories))
    fp = train_fingerprint(tiny_histories, targets)
    assert train_fingerprint(tiny_histories.copy(), targets.copy()) == fp
    other_history = tiny_histories.copy()
    other_history[2, -1] += 1
    other_target = targets.copy()
    other_target[0] += 1
    assert train_fingerprint(other_history, targets) != fp
    assert train_fingerprint(tiny_histories, other_target) != fp
    assert train_fingerprint(tiny_histories[:4], targets[:4]) != fp


def test_equal_inputs_reuse_the_cached_c0_without_recomputing(tiny_model, tiny_layout, tiny_codes, tiny_histories,
                                                              tmp_path, monkeypatch):
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    histories, targets = _inputs(tiny_histories, tiny_codes)
    first, cached = second_moments(dec, tiny_layout, histories, targets, tiny_codes, SITES, "h",
                                   train_fingerprint(histories, targets), tmp_path)
    assert not cached and len(list(tmp_path.glob("c0-*.safetensors"))) == len(SITES)

    def recompute(*args, **kwargs):
        raise AssertionError("C0 was recomputed although it is cached")

    monkeypatch.setattr(keys_module, "teacher_force", recompute)
    again, cached = second_moments(dec, tiny_layout, histories.copy(), targets.copy(), tiny_codes, SITES, "h",
                                   train_fingerprint(histories, targets), tmp_path)
    assert cached
    for site in SITES:
        assert torch.equal(again[site], first[site])


def _perturbed(model):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for name, weight in other.decoder.named_parameters():
            if ".DenseReluDense.wi" in name:  # the FFN input projections, whose outputs are the keys
                weight.add_(0.1)
    return other


@pytest.mark.parametrize("change", ["model_weights", "layer", "position", "n_samples", "targets"])
def test_a_changed_input_recomputes_c0(tiny_model, tiny_layout, tiny_codes, tiny_histories, tmp_path, change):
    """Each component of the cache key: changing it must give the C0 of the new inputs, never the cached one."""
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    histories, targets = _inputs(tiny_histories, tiny_codes)
    site = (1, 2)
    old, _ = second_moments(dec, tiny_layout, histories, targets, tiny_codes, [site], weights_hash(tiny_model),
                            train_fingerprint(histories, targets), tmp_path)
    model = tiny_model
    if change == "model_weights":
        model = _perturbed(tiny_model)
        dec = SteppedDecoder(model, tiny_layout.n_positions)
    elif change == "layer":
        site = (2, 2)
    elif change == "position":
        site = (1, 3)
    elif change == "n_samples":
        histories, targets = histories[:4], targets[:4]
    else:
        targets = tiny_codes[len(histories): 2 * len(histories)]
    args = (dec, tiny_layout, histories, targets, tiny_codes, [site], weights_hash(model),
            train_fingerprint(histories, targets))
    new, cached = second_moments(*args, tmp_path)
    fresh, _ = second_moments(*args, None)
    assert not cached
    assert torch.equal(new[site], fresh[site])
    assert not torch.allclose(new[site], old[(1, 2)])
    assert len(list(tmp_path.glob("c0-*.safetensors"))) == 2  # both kept: going back is a cache hit
    _, cached = second_moments(*args, tmp_path)
    assert cached


def _editor(tiny_model, tiny_layout, tiny_codes, tiny_histories, cache_dir, **cfg) -> ColdItemEditor:
    n = len(tiny_histories)
    train = CaseSet(np.arange(n), tiny_histories, np.arange(n), np.zeros(n))
    base = Recommender(copy.deepcopy(tiny_model), tiny_layout, tiny_codes)
    return ColdItemEditor(base, train, weights_hash(tiny_model), EditConfig(**cfg), cache_dir)


def test_editor_c0_cache_follows_the_sample_size_and_seed(tiny_model, tiny_layout, tiny_codes, tiny_histories,
                                                          tmp_path):
    """edit.c0_samples and edit.seed choose the training keys: a change of either is a new C0, not a cache hit."""
    make = lambda **cfg: _editor(tiny_model, tiny_layout, tiny_codes, tiny_histories, tmp_path, **cfg)  # noqa: E731
    c0, cached = make(c0_samples=4)._c0(tiny_codes, [(1, 2)])
    assert not cached
    again, cached = make(c0_samples=4)._c0(tiny_codes, [(1, 2)])
    assert cached and torch.equal(again[(1, 2)], c0[(1, 2)])
    more, cached = make(c0_samples=5)._c0(tiny_codes, [(1, 2)])
    assert not cached and not torch.allclose(more[(1, 2)], c0[(1, 2)])
    # another seed draws another 4 of the 6 samples
    seeds = [s for s in range(1, 20)
             if not np.array_equal(np.sort(np.random.default_rng(s + 1).choice(6, 4, replace=False)),
                                   np.sort(np.random.default_rng(1).choice(6, 4, replace=False)))]
    _, cached = make(c0_samples=4, seed=seeds[0])._c0(tiny_codes, [(1, 2)])
    assert not cached
