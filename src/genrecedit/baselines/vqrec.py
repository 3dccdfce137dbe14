"""VQ-Rec (Hou et al. 2023): items as product-quantised codes of their text embeddings, a SASRec over the sum of
the items' code embeddings.

Because an item is represented by codes computed from its text, an item absent from training (cold) still gets a
representation — the embeddings of codes it shares with training items — and is scored like any other.

Simplifications, against the paper:
- PQ, not OPQ: the text embedding is split into ``n_subspaces`` equal slices (zero-padded to a multiple), each
  quantised by its own sklearn ``KMeans`` with ``n_codes`` centroids (capped at the number of fitting items). No
  learned rotation.
- Codes are fitted on the items of the training split (``fit_items="warm"``, as the SID tokenizer is) and cold items
  are assigned to the nearest centroids; ``"all"`` fits on the whole catalog's text (no interactions used).
- No contrastive pre-training on other domains and no code-embedding permutation fine-tuning: the code embeddings
  and the transformer are trained from scratch on this run's training samples with the SASRec objective (full
  softmax over the catalog's code-sum representations).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn
from tqdm.auto import tqdm

from genrecedit.baselines.base import BaselineData
from genrecedit.baselines.sasrec import SASRec, SASRecConfig, SASRecNet
from genrecedit.errors import ConfigError, EmptyInputError


@dataclass
class VQRecConfig(SASRecConfig):
    n_subspaces: int = 32
    n_codes: int = 64
    fit_items: Literal["warm", "all"] = "warm"
    kmeans_iter: int = 50

    def validate(self) -> None:
        super().validate()
        if self.n_subspaces < 1 or self.n_codes < 2:
            raise ConfigError(f"n_subspaces must be >= 1 and n_codes >= 2: {self}")


def product_quantize(embeddings: np.ndarray, fit_rows: np.ndarray, n_subspaces: int, n_codes: int,
                     seed: int = 0, max_iter: int = 50) -> np.ndarray:
    """PQ codes of every item: embeddings [n, d] -> codes [n, n_subspaces] int64 in ``0..n_codes'-1``, where
    n_codes' = min(n_codes, number of fitting rows). Centroids are fitted on ``embeddings[fit_rows]`` only."""
    if len(fit_rows) == 0:
        raise EmptyInputError("no items to fit the product quantiser on")
    x = np.asarray(embeddings, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    width = -(-x.shape[1] // n_subspaces)
    x = np.pad(x, ((0, 0), (0, width * n_subspaces - x.shape[1])))
    k = min(n_codes, len(fit_rows))
    codes = np.zeros((x.shape[0], n_subspaces), np.int64)
    for s in tqdm(range(n_subspaces), desc="VQ-Rec PQ", unit="subspace", leave=False):
        part = x[:, s * width : (s + 1) * width]
        km = KMeans(k, n_init=1, max_iter=max_iter, random_state=seed + s).fit(part[fit_rows])
        codes[:, s] = km.predict(part)
    return codes


class CodeTable(nn.Module):
    """Item vector = Σ over subspaces of that subspace's code embedding. codes [n_items, D] is a buffer (saved
    with the weights). () -> [n_items, d]."""

    def __init__(self, codes: torch.Tensor, n_codes: int, d_model: int) -> None:
        super().__init__()
        n_subspaces = codes.shape[1]
        self.register_buffer("codes", codes.long())
        self.register_buffer("offsets", torch.arange(n_subspaces) * n_codes)
        self.embed = nn.Embedding(n_subspaces * n_codes, d_model)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self) -> torch.Tensor:
        return self.embed(self.codes + self.offsets).sum(dim=1)


class VQRec(SASRec):
    """SASRec's objective and scoring over ``CodeTable`` item vectors instead of ID embeddings."""

    name = "vqrec"
    config_class = VQRecConfig

    def prepare(self, data: BaselineData) -> dict:
        if data.embeddings is None or len(data.embeddings) != data.n_items:
            raise EmptyInputError("VQ-Rec needs a text embedding [n_items, d] for every catalog item")
        fit_rows = np.flatnonzero(data.seen_items()) if self.cfg.fit_items == "warm" else np.arange(data.n_items)
        self._codes = product_quantize(data.embeddings, fit_rows, self.cfg.n_subspaces, self.cfg.n_codes,
                                       self.cfg.seed, self.cfg.kmeans_iter)
        return {"n_items": data.n_items, "max_history": data.max_history,
                "n_codes": int(min(self.cfg.n_codes, len(fit_rows)))}

    def build(self, spec: dict) -> nn.Module:
        codes = getattr(self, "_codes", None)
        codes = torch.zeros(spec["n_items"], self.cfg.n_subspaces) if codes is None else torch.from_numpy(codes)
        table = CodeTable(codes, spec["n_codes"], self.cfg.d_model)  # restore() overwrites codes from the weights
        return SASRecNet(table, spec["n_items"], spec["max_history"], self.cfg)

    def scorable_items(self, data: BaselineData) -> np.ndarray:
        return np.ones(data.n_items, dtype=bool)  # every item has codes, cold ones included

    def item_codes(self) -> np.ndarray:
        """[n_items, n_subspaces] the fitted PQ codes."""
        return self.net.items.codes.cpu().numpy()
