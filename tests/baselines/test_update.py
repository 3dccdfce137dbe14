"""Retrain and Finetune baselines on the tiny run: they teach the edit's knowledge, write loadable models, measure
their cost, and refuse bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genrecedit.baselines.update import finetune, measure, pseudo_cases, retrain
from genrecedit.edit.knowledge import EditRequests
from genrecedit.errors import ConfigError, EmptyInputError, UnknownItemError
from genrecedit.model.beam import brute_force_scores
from genrecedit.model.recommender import DecodeConfig
from genrecedit.runs.evaluate import evaluate_model, evaluation_cases


def _target_logp(recommender, cases) -> np.ndarray:
    """[n] exact log-probability of each case's target item under ``recommender``."""
    ids, mask = recommender.layout.encoder_inputs(cases.histories, recommender.codes)
    with torch.no_grad():
        scores = brute_force_scores(recommender.decoder, recommender.layout, ids, mask, recommender.codes)
    return scores[torch.arange(len(cases)), torch.from_numpy(cases.targets)].numpy()


def test_pseudo_cases_are_the_requests_as_training_samples(loaded_tiny, tiny_requests):
    cases = pseudo_cases(loaded_tiny, tiny_requests)
    train = loaded_tiny.prepared.split.train
    assert len(cases) == len(tiny_requests)
    np.testing.assert_array_equal(cases.targets, tiny_requests.items)
    np.testing.assert_array_equal(cases.histories, tiny_requests.histories)
    copied = tiny_requests.sources >= 0
    np.testing.assert_array_equal(cases.users[copied], train.users[tiny_requests.sources[copied]])
    assert not loaded_tiny.prepared.split.warm[cases.targets].any()  # they teach cold items only


def test_finetune_raises_cold_scores_and_leaves_the_run_alone(loaded_tiny, tiny_requests, tmp_path):
    base_state = {k: v.clone() for k, v in loaded_tiny.recommender.model.state_dict().items()}
    sample = pseudo_cases(loaded_tiny, tiny_requests).subset(np.arange(min(24, len(tiny_requests))))
    before = _target_logp(loaded_tiny.recommender, sample)
    result = finetune(loaded_tiny, tiny_requests, tmp_path, epochs=3, lr=3e-3)
    tuned = result.recommender(loaded_tiny)
    after = _target_logp(tuned, sample)
    assert after.mean() > before.mean() + 0.5  # the cold items became (much) more likely on their histories
    changed = [k for k, v in tuned.model.state_dict().items() if not torch.equal(v, base_state[k])]
    assert changed
    for k, v in loaded_tiny.recommender.model.state_dict().items():  # the run's own model is untouched
        assert torch.equal(v, base_state[k])
    assert result.epochs == 3 and len(result.history) == 3 and result.n_samples == len(tiny_requests)
    assert result.wall_seconds > 0 and result.peak_rss_mb > 0
    assert (tmp_path / "update.json").exists()


def test_retrain_writes_a_model_that_evaluates(loaded_tiny, tiny_requests, tmp_path):
    result = retrain(loaded_tiny, tiny_requests, tmp_path, epochs=1, eval_cases=20)
    assert result.method == "retrain" and result.epochs == 1
    assert result.n_samples == len(loaded_tiny.prepared.split.train) + len(tiny_requests)
    assert (result.model_dir / "model.json").exists() and (tmp_path / "update.json").exists()
    retrained = result.as_run(loaded_tiny)
    assert retrained.base_hash != loaded_tiny.base_hash
    cases = evaluation_cases(loaded_tiny).subset(np.arange(10))
    metrics, seconds = evaluate_model(retrained, cases)
    assert metrics.summary()["overall"]["n_cases"] == 10 and seconds > 0
    beams = retrained.recommender.recommend(cases.histories, DecodeConfig(beam=10, k=5))
    assert (beams.items >= 0).all()  # a constrained beam only yields catalog items


def test_bad_input_is_refused_clearly(loaded_tiny, tiny_requests, tmp_path):
    empty = tiny_requests.subset(np.zeros(0, np.int64))
    with pytest.raises(EmptyInputError):
        pseudo_cases(loaded_tiny, empty)
    n_items = loaded_tiny.prepared.split.n_items
    bad = EditRequests(tiny_requests.histories[:2], np.array([0, n_items + 5]), tiny_requests.sources[:2])
    with pytest.raises(UnknownItemError, match=str(n_items + 5)):
        pseudo_cases(loaded_tiny, bad)
    short = EditRequests(tiny_requests.histories[:2, :3], tiny_requests.items[:2], tiny_requests.sources[:2])
    with pytest.raises(ConfigError, match="expects"):
        pseudo_cases(loaded_tiny, short)
    with pytest.raises(ConfigError, match="lr"):
        retrain(loaded_tiny, tiny_requests, tmp_path, lr=1.0)
    with pytest.raises(ConfigError, match="epochs"):
        finetune(loaded_tiny, tiny_requests, tmp_path, epochs=0)


def test_measure_reports_time_and_memory():
    with measure() as m:
        block = torch.ones(4096, 4096)  # 64 MiB
        block += 1
    assert m.wall_seconds > 0 and m.peak_rss_mb >= m.rss_start_mb > 0
    if m.peak_reset:  # Linux: the peak is the block's own, so the 64 MiB block shows
        assert m.peak_rss_increase_mb > 48
