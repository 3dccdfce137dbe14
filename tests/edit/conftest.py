"""A tiny model + catalog for the edit tests (the same shapes as tests/model, built independently)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genrecedit.model.tiger import TigerConfig, build_tiger
from genrecedit.model.tokens import TokenLayout


@pytest.fixture(scope="session")
def layout() -> TokenLayout:
    return TokenLayout((5, 4, 3, 3))


@pytest.fixture(scope="session")
def model(layout):
    cfg = TigerConfig(d_model=16, num_heads=2, d_kv=8, encoder_layers=1, decoder_layers=3, d_ff=32,
                      decoder_d_ff=48, dropout=0.0)
    m = build_tiger(cfg, layout, seed=5).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(8.0)
    return m


@pytest.fixture(scope="session")
def codes(layout) -> np.ndarray:
    rng = np.random.default_rng(0)
    all_sids = np.stack(np.meshgrid(*[np.arange(s) for s in layout.sizes], indexing="ij"), -1).reshape(-1, 4)
    return all_sids[rng.choice(len(all_sids), size=40, replace=False)]


@pytest.fixture(scope="session")
def histories() -> np.ndarray:
    rng = np.random.default_rng(1)
    hist = rng.integers(0, 40, size=(7, 5))
    hist[0, :] = -1
    return hist
