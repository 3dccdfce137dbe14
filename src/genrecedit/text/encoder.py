"""The ``TextEncoder`` protocol, on its own so that both the encoders (``embed``) and the embedding cache
(``cache``) can import it without importing each other."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns texts into fixed-size float32 vectors.

    ``name`` must identify the encoder *and* every setting that changes its output: it keys the embedding cache.
    Note: ``isinstance(x, TextEncoder)`` reads ``x.dim``, which loads ``MiniLMEncoder``'s model.
    """

    name: str

    @property
    def dim(self) -> int:
        """Embedding size d."""
        ...

    def encode(self, texts: list[str]) -> np.ndarray:
        """``[n] texts -> [n, dim]`` float32. Rows depend only on their own text, never on the batch."""
        ...
