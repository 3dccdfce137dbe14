"""Comparison baselines (docs/method.md §6): SASRec, BERT4Rec and VQ-Rec learn an obvious sequential pattern; the
item-ID models never list a cold item while VQ-Rec can; fitted weights round-trip; SpecGR's verification and
composition; the registry refuses what it does not know."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genrecedit.baselines.base import BaselineData, topk_from_scores
from genrecedit.baselines.registry import BASELINES, load_baseline, make
from genrecedit.baselines.specgr import SpecGR, Speculation, compose, sid_log_likelihood
from genrecedit.data.dataset import PAD_ITEM, CaseSet
from genrecedit.errors import ArtifactMismatchError, ConfigError
from genrecedit.model.beam import brute_force_scores
from genrecedit.model.recommender import DecodeConfig, Recommender

N_WARM, N_COLD, HISTORY = 20, 5, 6
FAST = {"epochs": 8, "d_model": 32, "d_ff": 64, "dropout": 0.0, "lr": 5e-3, "batch_size": 64, "patience": 2}
PARAMS = {"sasrec": FAST, "bert4rec": {**FAST, "epochs": 12}, "vqrec": {**FAST, "n_subspaces": 4, "n_codes": 16}}


def chain_cases(n: int, seed: int) -> CaseSet:
    """Histories that walk the warm items i -> i + 1 (mod N_WARM), of random length 1..HISTORY, left-padded."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, N_WARM, n)
    lengths = rng.integers(1, HISTORY + 1, n)
    walk = (starts[:, None] + np.arange(HISTORY + 1)[None]) % N_WARM  # [n, HISTORY + 1]
    hist = np.full((n, HISTORY), PAD_ITEM, np.int64)
    for row, length in enumerate(lengths):
        hist[row, HISTORY - length :] = walk[row, :length]
    targets = walk[np.arange(n), lengths]
    return CaseSet(np.arange(n), hist, targets.astype(np.int64), np.zeros(n))


@pytest.fixture(scope="module")
def chain_data() -> BaselineData:
    """Items 0..19 warm, 20..24 cold; cold item 20 + j has the text of warm item j (plus noise)."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(N_WARM + N_COLD, 16)).astype(np.float32)
    emb[N_WARM:] = emb[:N_COLD] + 0.01 * rng.normal(size=(N_COLD, 16))
    return BaselineData(chain_cases(600, 1), chain_cases(150, 2), N_WARM + N_COLD, emb)


@pytest.fixture(scope="module")
def fitted(chain_data, tmp_path_factory):
    torch.set_num_threads(1)
    out = {}
    for name, params in PARAMS.items():
        model = make(name, params)
        model.fit_data(chain_data, tmp_path_factory.mktemp(name))
        out[name] = model
    return out


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_learns_the_next_item_pattern(fitted, chain_data, name):
    top = fitted[name].recommend(chain_data.valid, 5)
    assert top.shape == (len(chain_data.valid), 5)
    recall5 = (top == chain_data.valid.targets[:, None]).any(axis=1).mean()
    assert recall5 >= 0.9, f"{name} R@5 {recall5:.2f}"
    assert fitted[name].fit_result.best_valid_ndcg10 > 0.6


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_empty_and_overlong_histories_still_get_a_full_list(fitted, name):
    empty = CaseSet(np.zeros(1, np.int64), np.full((1, HISTORY), PAD_ITEM), np.zeros(1, np.int64), np.zeros(1))
    assert (fitted[name].recommend(empty, 5) != PAD_ITEM).all()  # no NaN from an all-pad row
    long = chain_cases(4, 3)
    long = CaseSet(long.users, np.concatenate([long.histories, long.histories], axis=1), long.targets,
                   long.timestamps)
    assert fitted[name].recommend(long, 5).shape == (4, 5)  # longer histories keep their last items


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_item_id_models_never_recommend_a_cold_item(fitted, chain_data, name):
    top = fitted[name].recommend(chain_data.valid, N_WARM + N_COLD)
    listed = top[top != PAD_ITEM]
    assert (listed < N_WARM).all()
    assert (top[:, N_WARM:] == PAD_ITEM).all()  # the slots beyond the warm items stay empty


def test_vqrec_scores_cold_items_through_their_text_codes(fitted, chain_data):
    model = fitted["vqrec"]
    codes = model.item_codes()
    np.testing.assert_array_equal(codes[N_WARM:], codes[:N_COLD])  # a twin's text quantises to the same codes
    top = model.recommend(chain_data.valid, 3)
    assert (top >= N_WARM).any()  # cold items reach the lists
    twin_first = top[:, 0] < N_COLD
    assert twin_first.any()
    twin_listed = (top[twin_first] == (top[twin_first, :1] + N_WARM)).any(axis=1)
    assert twin_listed.mean() >= 0.9  # the cold twin scores like the warm item it copies


def test_fitted_weights_are_saved_reused_and_loaded(chain_data, tmp_path):
    params = {**FAST, "epochs": 2, "loss_positions": "all"}
    model = make("sasrec", params)
    first = model.fit_data(chain_data, tmp_path)
    assert not first.reused and (tmp_path / "weights.safetensors").exists()
    again = make("sasrec", params)
    assert again.fit_data(chain_data, tmp_path).reused
    loaded = load_baseline(tmp_path)
    np.testing.assert_array_equal(loaded.recommend(chain_data.valid, 5), model.recommend(chain_data.valid, 5))
    other = make("sasrec", {**params, "epochs": 1})  # another config: trains anew instead of reusing
    assert not other.fit_data(chain_data, tmp_path).reused


def test_registry_refuses_unknown_names_and_keys():
    with pytest.raises(ConfigError, match="known: .*sasrec"):
        make("lcrec", {})
    with pytest.raises(ConfigError, match="unknown key"):
        make("sasrec", {"hidden": 3})
    with pytest.raises(ConfigError):
        make("bert4rec", {"mask_prob": 0.0})
    assert set(BASELINES) == {"sasrec", "bert4rec", "vqrec", "specgr"}
    with pytest.raises(ArtifactMismatchError):
        make("sasrec", {}).recommend(chain_cases(2, 0), 3)


def test_topk_pads_items_that_cannot_be_ranked():
    scores = torch.tensor([[0.1, float("-inf"), 0.3], [float("-inf")] * 3])
    np.testing.assert_array_equal(topk_from_scores(scores, 4), [[2, 0, -1, -1], [-1, -1, -1, -1]])


# --- SpecGR -----------------------------------------------------------------------------------------------------


def test_compose_accepts_drafts_above_threshold_then_fills_from_beams():
    spec = Speculation(drafts=np.array([[7, 8, 9, PAD_ITEM]]), loglik=np.array([[-1.0, -0.2, -3.0, -np.inf]]),
                       beams=np.array([[1, 8, 2, 3, 4]]))
    np.testing.assert_array_equal(compose(spec, -1.5, 4), [[8, 7, 1, 2]])  # 8 not repeated from the beams
    np.testing.assert_array_equal(compose(spec, np.inf, 4), [[1, 8, 2, 3]])
    np.testing.assert_array_equal(compose(spec, -np.inf, 4), [[8, 7, 9, 1]])
    short = Speculation(np.array([[PAD_ITEM]]), np.array([[-np.inf]]), np.array([[5, PAD_ITEM]]))
    np.testing.assert_array_equal(compose(short, 0.0, 3), [[5, PAD_ITEM, PAD_ITEM]])


@pytest.fixture(scope="module")
def tiny_specgr(tiny_model, tiny_layout, tiny_codes):
    recommender = Recommender(tiny_model, tiny_layout, tiny_codes)
    emb = np.random.default_rng(5).normal(size=(len(tiny_codes), 8)).astype(np.float32)
    return SpecGR(make("specgr", {"draft_size": 6}).cfg).attach(recommender, emb, DecodeConfig(beam=10, k=5))


def test_sid_log_likelihood_is_the_teacher_forced_mean(tiny_specgr, tiny_histories):
    rec = tiny_specgr.recommender
    items = np.tile(np.arange(8), (len(tiny_histories), 1))
    items[0, -1] = PAD_ITEM
    mean = sid_log_likelihood(rec, tiny_histories, items)
    ids, mask = rec.layout.encoder_inputs(tiny_histories, rec.codes)
    exact = brute_force_scores(rec.decoder, rec.layout, ids, mask, rec.codes)[:, :8] / rec.layout.n_positions
    torch.testing.assert_close(mean[1:], exact[1:].float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mean[0, :-1], exact[0, :-1].float(), rtol=1e-4, atol=1e-5)
    assert mean[0, -1] == float("-inf")


def test_specgr_accepts_likely_drafts_and_otherwise_keeps_the_beams(tiny_specgr, tiny_histories):
    cases = CaseSet(np.arange(len(tiny_histories)), tiny_histories, np.zeros(len(tiny_histories), np.int64),
                    np.zeros(len(tiny_histories)))
    spec = tiny_specgr.speculate(tiny_histories, 5)
    assert (spec.drafts[0] == PAD_ITEM).all()  # an empty history drafts nothing
    hist_items = tiny_histories[2][tiny_histories[2] != PAD_ITEM]
    assert not np.isin(spec.drafts[2], hist_items).any()  # history items are not drafted back
    tiny_specgr.threshold = np.inf
    np.testing.assert_array_equal(tiny_specgr.recommend(cases, 5), spec.beams)
    threshold = float(np.median(spec.loglik[1:]))
    tiny_specgr.threshold = threshold
    top = tiny_specgr.recommend(cases, 5)
    for row in range(1, len(cases)):
        accepted = spec.drafts[row][spec.loglik[row] >= threshold]
        accepted = accepted[np.argsort(-spec.loglik[row][spec.loglik[row] >= threshold], kind="stable")][:5]
        np.testing.assert_array_equal(top[row, : len(accepted)], accepted)
        rest = [b for b in spec.beams[row] if b not in accepted][: 5 - len(accepted)]
        np.testing.assert_array_equal(top[row, len(accepted) :], rest)


def test_specgr_fit_tunes_the_threshold_on_validation_and_reuses_it(loaded_tiny, tmp_path):
    model = make("specgr", {"tune_cases": 40, "tune_grid": 5, "draft_size": 5})
    result = model.fit(loaded_tiny, tmp_path)
    assert model.threshold is not None and len(result.history) >= 2
    assert result.best_valid_ndcg10 == max(h["valid_ndcg@10"] for h in result.history)
    test = loaded_tiny.prepared.split.test
    top = model.recommend(test.subset(np.arange(min(20, len(test)))), 10)
    assert top.shape == (min(20, len(test)), 10)
    again = make("specgr", {"tune_cases": 40, "tune_grid": 5, "draft_size": 5})
    assert again.fit(loaded_tiny, tmp_path).reused and again.threshold == model.threshold
    assert load_baseline(tmp_path, loaded_tiny).threshold == model.threshold
