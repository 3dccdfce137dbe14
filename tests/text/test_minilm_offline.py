"""The real MiniLM encoder loads from the installed wheel and never touches the network."""
from __future__ import annotations

import socket

import numpy as np
import pytest

from genrecedit.text import MiniLMEncoder

TITLES = ["Super Mario Odyssey - Nintendo Switch", "Mario Kart 8 Deluxe", "Logitech G502 gaming mouse"]


def test_minilm_encodes_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    enc = MiniLMEncoder(device="cpu", show_progress=False)
    x = enc.encode(TITLES)
    assert enc.dim == 384 and x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-4)
    sims = x @ x.T
    assert sims[0, 1] > sims[0, 2]  # two Mario games are closer than a mouse
