"""HashingEncoder (the test/demo stand-in) and the encoder factory."""
from __future__ import annotations

import numpy as np
import pytest

from genrecedit.errors import ConfigError
from genrecedit.text import HashingEncoder, MiniLMEncoder, TextEncoder, make_encoder

TITLES = ["Super Mario Odyssey", "Mario Kart 8 Deluxe", "Call of Duty: Black Ops", "Xbox One wireless controller"]


def test_deterministic_and_batch_independent() -> None:
    a = HashingEncoder().encode(TITLES)
    b = HashingEncoder().encode(TITLES)
    np.testing.assert_array_equal(a, b)
    for i, title in enumerate(TITLES):
        np.testing.assert_array_equal(HashingEncoder().encode([title])[0], a[i])
    np.testing.assert_array_equal(HashingEncoder().encode(TITLES[::-1])[::-1], a)


def test_shape_norm_and_similarity() -> None:
    enc = HashingEncoder(dim=32)
    x = enc.encode(TITLES)
    assert x.shape == (4, 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    sims = x @ x.T
    assert sims[0, 1] > sims[0, 2]  # "Mario" is shared
    assert enc.encode(["!!!"]).tolist() == [[0.0] * 32]  # no word token: zero, never NaN
    assert enc.encode([]).shape == (0, 32)


def test_names_identify_settings() -> None:
    assert "hashing" in HashingEncoder().name
    assert HashingEncoder(seed=1).name != HashingEncoder(seed=2).name
    assert HashingEncoder(dim=8).name != HashingEncoder(dim=16).name
    assert not np.array_equal(HashingEncoder(seed=1).encode(TITLES), HashingEncoder(seed=2).encode(TITLES))


def test_make_encoder() -> None:
    hashing = make_encoder("hashing")
    assert isinstance(hashing, HashingEncoder) and isinstance(hashing, TextEncoder)
    assert isinstance(make_encoder("minilm", device="cpu"), MiniLMEncoder)  # lazy: no model load yet
    with pytest.raises(ConfigError, match="minilm"):
        make_encoder("sentence-t5")
