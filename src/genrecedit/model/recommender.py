"""``Recommender``: a trained backbone plus its catalog, the one entry point for top-K recommendations."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from genrecedit.errors import ConfigError
from genrecedit.model.beam import Beams, EditSchedule, beam_search
from genrecedit.model.decoder import SteppedDecoder
from genrecedit.model.tokens import TokenLayout, length_batches
from genrecedit.model.trie import PrefixTrie


@dataclass
class DecodeConfig:
    """Beam search settings: the top ``k`` items come from ``beam`` beams, so ``k <= beam``."""

    beam: int = 20
    k: int = 20
    batch_size: int = 256
    constrained: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.beam:
            raise ConfigError(f"decode.k={self.k} must be between 1 and decode.beam={self.beam} (top-k comes from "
                              "the beams); raise decode.beam to report metrics at larger k")


class Recommender:
    """Backbone + catalog SIDs [n_items, P]. The catalog can grow (``set_catalog``) without touching the model."""

    def __init__(self, model: torch.nn.Module, layout: TokenLayout, codes: np.ndarray) -> None:
        self.model = model.eval()
        self.layout = layout
        self.decoder = SteppedDecoder(model, layout.n_positions)
        self.set_catalog(codes)

    @property
    def device(self) -> torch.device:
        return self.decoder.device

    def set_catalog(self, codes: np.ndarray) -> None:
        """Replace the catalog SIDs (e.g. after adding items); rebuilds the trie."""
        self.codes = np.asarray(codes, dtype=np.int64)
        self.trie = PrefixTrie(self.codes, self.layout.sizes).to(self.device)

    @torch.no_grad()
    def recommend(self, histories: np.ndarray, cfg: DecodeConfig, edits: EditSchedule | None = None,
                  progress: bool | str = False, record_levels: bool = False) -> Beams:
        """[n, L] item-index histories (left-padded with PAD_ITEM) -> top-``cfg.k`` items for each.
        record_levels: keep each intermediate level's decoded prefixes (``Beams.levels``)."""
        parts: list[Beams] = []
        # batches of similar history length (each row's beams are independent of the other rows'); the lists are
        # put back in input order below
        batches = length_batches(histories, cfg.batch_size)
        bar = tqdm(batches, desc=progress if isinstance(progress, str) else "recommend", disable=not progress,
                   unit="batch")
        for rows in bar:
            ids, mask = self.layout.encoder_inputs(histories[rows], self.codes)
            parts.append(beam_search(self.decoder, self.layout, self.trie, ids, mask, cfg.beam, cfg.k,
                                     cfg.constrained, edits, record_levels=record_levels))
        n_levels = self.layout.n_positions - 1
        if not parts:
            empty = torch.zeros((0, cfg.k), dtype=torch.long)
            levels = [(torch.zeros((0, cfg.beam), dtype=torch.long), torch.zeros((0, cfg.beam)))] * n_levels
            return Beams(empty, empty.float(), torch.zeros((0, cfg.k, self.layout.n_positions), dtype=torch.long),
                         levels if record_levels else None)
        back = torch.from_numpy(np.argsort(np.concatenate(batches)))
        out = Beams(*(torch.cat([getattr(p, f) for p in parts]).cpu()[back] for f in ("items", "scores", "sids")))
        if record_levels:
            out.levels = [tuple(torch.cat([p.levels[lv][i] for p in parts]).cpu()[back] for i in (0, 1))
                          for lv in range(n_levels)]
        return out
