"""Batches cut in history-length order (``length_order``) give the same answers, row by row and in input order, as
each request on its own: beam search lists and teacher-forced keys."""
from __future__ import annotations

import numpy as np
import torch

from genrecedit.edit.keys import collect_keys
from genrecedit.model.recommender import DecodeConfig, Recommender
from genrecedit.model.tokens import length_order


def _mixed_histories(n: int = 23, width: int = 7, seed: int = 5, n_items: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hist = rng.integers(0, n_items, size=(n, width))
    lengths = rng.integers(0, width + 1, size=n)
    for row, length in enumerate(lengths):
        hist[row, : width - length] = -1  # left-padded, lengths 0..width in no particular order
    return hist


def test_length_order_sorts_by_real_length_stably():
    hist = _mixed_histories()
    order = length_order(hist)
    lengths = (hist != -1).sum(axis=1)
    assert sorted(order.tolist()) == list(range(len(hist)))
    assert (np.diff(lengths[order]) >= 0).all()
    for length in np.unique(lengths):  # ties keep input order
        same = order[lengths[order] == length]
        assert (np.diff(same) > 0).all()


def test_recommend_in_batches_equals_one_request_at_a_time(tiny_model, tiny_layout, tiny_codes):
    hist = _mixed_histories()
    rec = Recommender(tiny_model, tiny_layout, tiny_codes)
    cfg = DecodeConfig(beam=8, k=8, batch_size=5)  # several batches, each of a different padded width
    batched = rec.recommend(hist, cfg)
    for row in range(len(hist)):
        alone = rec.recommend(hist[row : row + 1], cfg)
        assert batched.items[row].tolist() == alone.items[0].tolist(), row
        torch.testing.assert_close(batched.scores[row], alone.scores[0], rtol=1e-5, atol=1e-5)
        assert batched.sids[row].tolist() == alone.sids[0].tolist()


def test_collect_keys_come_back_in_input_order(tiny_model, tiny_layout, tiny_codes):
    hist = _mixed_histories()
    targets = tiny_codes[np.random.default_rng(2).integers(0, len(tiny_codes), len(hist))]
    rec = Recommender(tiny_model, tiny_layout, tiny_codes)
    sites = [(0, 1), (2, 3)]
    batched = collect_keys(rec.decoder, tiny_layout, hist, targets, tiny_codes, sites, batch_size=4)
    for row in (0, 7, 22):
        alone = collect_keys(rec.decoder, tiny_layout, hist[row : row + 1], targets[row : row + 1], tiny_codes, sites)
        for site in sites:
            torch.testing.assert_close(batched[site][row], alone[site][0], rtol=1e-5, atol=1e-5)
