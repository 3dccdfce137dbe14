"""SASRec (Kang & McAuley 2018): causal self-attention over item-ID embeddings, next-item prediction.

Item-ID model: an item that never occurs in a training sample has no trained embedding, so its score is -inf and
it is never recommended — cold recall is 0 by construction (docs/method.md §6), not by measurement.

Choices (documented, not the paper's exact recipe): full softmax cross-entropy over the catalog instead of BCE with
one sampled negative (exact and affordable at our catalog sizes); pre-LayerNorm ``nn.TransformerEncoder`` with
GELU; the output layer shares the item embeddings. ``loss_positions="last"`` (default) trains only the target of
each training sample, exactly the signal TIGER is trained on, and keeps the softmax cheap on large catalogs;
``"all"`` trains every position of the window ``history + [target]`` to predict the item after it (the original
recipe; on our overlapping per-interaction samples it repeats each transition up to L times an epoch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genrecedit.baselines.sequential import IdTable, SequenceEncoder, SequentialBaseline, SequentialConfig
from genrecedit.data.dataset import PAD_ITEM


@dataclass
class SASRecConfig(SequentialConfig):
    loss_positions: Literal["all", "last"] = "last"


class SASRecNet(nn.Module):
    """Item table + causal encoder. ``hidden(seq)`` [B, T] -> [B, T, d]; scores are ``hidden @ table.T``."""

    def __init__(self, items: nn.Module, n_items: int, max_len: int, cfg: SequentialConfig) -> None:
        super().__init__()
        self.items = items
        self.encoder = SequenceEncoder(n_items, max_len, cfg, causal=True)

    def forward(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """seq [B, T] -> (hidden [B, T, d], item table [n_items, d])."""
        table = self.items()
        return self.encoder(seq, table), table


def next_item_loss(net: SASRecNet, histories: torch.Tensor, targets: torch.Tensor, all_positions: bool
                   ) -> torch.Tensor:
    """Mean CE of the next item. histories [B, L], targets [B].

    all_positions: slot i of the history predicts slot i + 1 of ``history + [target]`` wherever that is an item
    (including the pad just before the first item, which learns the empty-history answer); else only the last
    slot predicts the target.
    """
    hidden, table = net(histories)
    if not all_positions:
        return F.cross_entropy(hidden[:, -1] @ table.T, targets)
    labels = torch.cat([histories[:, 1:], targets[:, None]], dim=1)  # [B, L]
    keep = labels != PAD_ITEM
    return F.cross_entropy(hidden[keep] @ table.T, labels[keep])


class SASRec(SequentialBaseline):
    name = "sasrec"
    config_class = SASRecConfig

    def build(self, spec: dict) -> nn.Module:
        return SASRecNet(IdTable(spec["n_items"], self.cfg.d_model), spec["n_items"], spec["max_history"],
                         self.cfg)

    def loss(self, histories: torch.Tensor, targets: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return next_item_loss(self.net, histories, targets, self.cfg.loss_positions == "all")

    def score(self, histories: torch.Tensor) -> torch.Tensor:
        hidden, table = self.net(histories)
        return hidden[:, -1] @ table.T
