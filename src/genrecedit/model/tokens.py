"""Position-specific SID token ids: how items become encoder and decoder token sequences.

Vocabulary: ``PAD`` (also the decoder start token), ``EOS`` (closes every encoder input, so an empty history is
``[EOS]``), then one block of ids per SID position: token id = offset[p] + code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genrecedit.data.dataset import PAD_ITEM

PAD = 0
EOS = 1
N_SPECIAL = 2


def length_order(histories: np.ndarray) -> np.ndarray:
    """[n] indices that sort left-padded histories by real length (stable). Batches cut from this order carry
    little padding: ``encoder_inputs`` drops a batch's all-pad columns, and the encoder's and cross-attention's
    cost grows with the batch's longest history (on game test cases ≈ 3× fewer encoder tokens than in input order).
    """
    return np.argsort((np.asarray(histories) != PAD_ITEM).sum(axis=1), kind="stable")


def length_batches(histories: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices of the batches cut from ``length_order``; ``np.argsort(np.concatenate(batches))`` puts results
    computed batch by batch back in input order."""
    order = length_order(histories)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@dataclass(frozen=True)
class TokenLayout:
    """Token-id layout for SIDs of ``len(sizes)`` positions, position p having ``sizes[p]`` codes."""

    sizes: tuple[int, ...]

    @property
    def n_positions(self) -> int:
        return len(self.sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(N_SPECIAL + int(s) for s in np.concatenate([[0], np.cumsum(self.sizes)[:-1]]))

    @property
    def vocab_size(self) -> int:
        return N_SPECIAL + int(sum(self.sizes))

    def position_slice(self, p: int) -> slice:
        """The logit columns that hold position p's tokens."""
        start = self.offsets[p]
        return slice(start, start + self.sizes[p])

    def position_mask(self) -> torch.Tensor:
        """[P, V] additive mask: 0 on position p's tokens, -inf elsewhere (training and decoding share it)."""
        mask = torch.full((self.n_positions, self.vocab_size), float("-inf"))
        for p in range(self.n_positions):
            mask[p, self.position_slice(p)] = 0.0
        return mask

    def sid_tokens(self, codes: np.ndarray) -> np.ndarray:
        """[..., P] codes -> [..., P] token ids."""
        return codes + np.asarray(self.offsets, dtype=np.int64)

    def encoder_inputs(self, histories: np.ndarray, codes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Histories of item indices -> encoder token ids and attention mask.

        histories: [n, L] item indices, left-padded with PAD_ITEM; codes: [n_items, P].
        Returns ids [n, T] and mask [n, T] with T = P * L' + 1, where L' is the longest real history in the batch
        (leading all-pad columns are dropped) and the last token is EOS.
        """
        n = histories.shape[0]
        real = histories != PAD_ITEM
        longest = int(real.sum(axis=1).max()) if n else 0
        hist = histories[:, histories.shape[1] - longest :] if longest else histories[:, :0]
        real = real[:, real.shape[1] - longest :] if longest else real[:, :0]
        tokens = self.sid_tokens(codes[np.where(real, hist, 0)])  # [n, L', P]
        tokens = np.where(real[..., None], tokens, PAD).reshape(n, -1)
        mask = np.repeat(real, self.n_positions, axis=1)
        ids = np.concatenate([tokens, np.full((n, 1), EOS, np.int64)], axis=1)
        mask = np.concatenate([mask, np.ones((n, 1), bool)], axis=1)
        return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))

    def decoder_inputs(self, target_codes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, P] target codes -> decoder input ids [n, P] = [PAD(start), t_0 .. t_{P-2}] and labels [n, P]."""
        labels = torch.from_numpy(self.sid_tokens(target_codes))
        start = torch.full((labels.shape[0], 1), PAD, dtype=torch.long)
        return torch.cat([start, labels[:, :-1]], dim=1), labels
