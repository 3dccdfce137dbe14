"""BERT4Rec (Sun et al. 2019): a bidirectional transformer over item IDs trained to fill in masked items.

Item-ID model: an item that never occurs in a training sample has no trained embedding, so its score is -inf and
it is never recommended — cold recall is 0 by construction (docs/method.md §6).

Training window = ``history + [target]`` (L + 1 slots). Each real slot is masked with probability ``mask_prob``
(at least one per row); with probability ``last_mask_prob`` a row instead masks only its last slot, the exact
shape of a prediction (the paper appends such samples too). Prediction: ``history + [mask]``, read at the mask.
Full softmax over the catalog (tied output embeddings); pre-LayerNorm ``nn.TransformerEncoder``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrecedit.baselines.sequential import (MASK_ITEM, IdTable, SequenceEncoder, SequentialBaseline,
                                             SequentialConfig)
from genrecedit.data.dataset import PAD_ITEM
from genrecedit.errors import ConfigError


@dataclass
class BERT4RecConfig(SequentialConfig):
    mask_prob: float = 0.2
    last_mask_prob: float = 0.25

    def validate(self) -> None:
        super().validate()
        if not (0 < self.mask_prob <= 1 and 0 <= self.last_mask_prob <= 1):
            raise ConfigError(f"mask_prob must be in (0, 1] and last_mask_prob in [0, 1]: {self}")


class BERT4RecNet(nn.Module):
    def __init__(self, n_items: int, max_len: int, cfg: SequentialConfig) -> None:
        super().__init__()
        self.items = IdTable(n_items, cfg.d_model)
        self.encoder = SequenceEncoder(n_items, max_len, cfg, causal=False)

    def forward(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """seq [B, T] (PAD_ITEM / MASK_ITEM slots) -> (hidden [B, T, d], item table [n_items, d])."""
        table = self.items()
        return self.encoder(seq, table), table


class BERT4Rec(SequentialBaseline):
    name = "bert4rec"
    config_class = BERT4RecConfig

    def build(self, spec: dict) -> nn.Module:
        return BERT4RecNet(spec["n_items"], spec["max_history"] + 1, self.cfg)

    def loss(self, histories: torch.Tensor, targets: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """histories [B, L], targets [B] -> mean CE at the masked slots of ``history + [target]``."""
        seq = torch.cat([histories, targets[:, None]], dim=1)  # [B, L+1]
        real = seq != PAD_ITEM
        rand = torch.rand(seq.shape, generator=gen, device=seq.device)
        masked = real & (rand < self.cfg.mask_prob)
        masked[:, -1] |= ~masked.any(dim=1)  # at least one masked slot per row (the target is always real)
        last_only = torch.rand(seq.shape[0], generator=gen, device=seq.device) < self.cfg.last_mask_prob
        masked[last_only] = False
        masked[last_only, -1] = True
        hidden, table = self.net(seq.masked_fill(masked, MASK_ITEM))
        return F.cross_entropy(hidden[masked] @ table.T, seq[masked])

    def score(self, histories: torch.Tensor) -> torch.Tensor:
        mask = torch.full((histories.shape[0], 1), MASK_ITEM, dtype=histories.dtype, device=histories.device)
        hidden, table = self.net(torch.cat([histories, mask], dim=1))
        return hidden[:, -1] @ table.T
