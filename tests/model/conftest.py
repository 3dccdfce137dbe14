"""Tiny models and catalogs shared by the model and edit tests."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genrecedit.model.tiger import TigerConfig, build_tiger
from genrecedit.model.tokens import TokenLayout


@pytest.fixture(scope="session")
def tiny_layout() -> TokenLayout:
    return TokenLayout((5, 4, 3, 3))


@pytest.fixture(scope="session")
def tiny_model(tiny_layout):
    cfg = TigerConfig(d_model=16, num_heads=2, d_kv=8, encoder_layers=1, decoder_layers=3, d_ff=32,
                      decoder_d_ff=48, dropout=0.0)
    model = build_tiger(cfg, tiny_layout, seed=3).eval()
    # Untrained T5 init gives near-uniform logits; scale the head so rankings are decisive and ties impossible.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


@pytest.fixture(scope="session")
def tiny_codes(tiny_layout) -> np.ndarray:
    rng = np.random.default_rng(0)
    sizes = tiny_layout.sizes
    all_sids = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    return all_sids[rng.choice(len(all_sids), size=40, replace=False)]


@pytest.fixture(scope="session")
def tiny_histories() -> np.ndarray:
    rng = np.random.default_rng(1)
    hist = rng.integers(0, 40, size=(6, 5))
    hist[0, :] = -1  # an empty history
    hist[1, :3] = -1  # a short one
    return hist
