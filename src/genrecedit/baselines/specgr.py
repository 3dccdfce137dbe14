"""SpecGR (Ding et al. 2024, docs/method.md §6): speculative drafting of candidates, cold items included, verified by
the generative recommender.

1. Draft: the user's query vector is the mean of the (unit-normalised) text embeddings of the last
   ``draft_history`` history items; the ``draft_size`` catalog items most cosine-similar to it — warm or cold —
   are the drafts. Items already in the history are skipped by default (a text drafter would otherwise propose the
   history back); an empty history drafts nothing.
2. Verify: each draft's mean SID log-likelihood under the (unedited) TIGER model, teacher-forced:
   (1/P) Σ_p log softmax_p(c_p | history, c_<p), over position p's tokens as the beam search scores them.
3. Accept drafts at or above ``threshold`` (chosen on validation cases to maximise overall NDCG@10 unless given),
   ranked by that likelihood; the rest of the top-k comes from the trie-constrained TIGER beams, in beam order,
   without repeating an accepted item.

Simplifications: the drafter is the text-embedding similarity above, not a trained inductive (UniSRec-style)
drafter, and there is no guided re-drafting loop.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from genrecedit.baselines.base import Baseline, BaselineData, FitResult, can_reuse, read_fit, write_fit
from genrecedit.data.dataset import PAD_ITEM, CaseSet
from genrecedit.errors import ArtifactMismatchError, ConfigError
from genrecedit.evaluation.metrics import ndcg_at, target_ranks
from genrecedit.model.decoder import DecoderCache
from genrecedit.model.recommender import DecodeConfig, Recommender
from genrecedit.model.tokens import PAD
from genrecedit.runs.backbone import LoadedRun

@dataclass
class SpecGRConfig:
    draft_size: int = 50
    draft_history: int = 5  # the last this-many history items form the drafter's query
    exclude_history: bool = True
    threshold: float | None = None  # mean SID log-likelihood to accept a draft; None = choose on validation
    tune_cases: int = 1000  # validation cases sampled (seeded) to choose the threshold
    tune_grid: int = 40  # candidate thresholds: quantiles of the validation drafts' likelihoods, plus ±inf
    batch_size: int = 128
    seed: int = 0

    def validate(self) -> None:
        if self.draft_size < 1 or self.draft_history < 1 or self.batch_size < 1 or self.tune_grid < 1:
            raise ConfigError(f"draft_size, draft_history, batch_size and tune_grid must be >= 1: {self}")


@dataclass
class Speculation:
    """Per-case drafts and beams, everything ``compose`` needs to apply any threshold.

    drafts [n, D] item indices (PAD_ITEM: none); loglik [n, D] their mean SID log-likelihood (-inf for none);
    beams [n, K] the TIGER top-K (PAD_ITEM for empty slots)."""

    drafts: np.ndarray
    loglik: np.ndarray
    beams: np.ndarray


@torch.no_grad()
def sid_log_likelihood(recommender: Recommender, histories: np.ndarray, items: np.ndarray) -> torch.Tensor:
    """Teacher-forced mean SID log-likelihood of given items: histories [B, L], items [B, D] (PAD_ITEM allowed)
    -> [B, D] float (-inf where the item is PAD_ITEM). Position p's log-probability is over position p's tokens,
    exactly the per-position term of the beam search's item score."""
    layout, decoder = recommender.layout, recommender.decoder
    device = recommender.device
    batch, width = items.shape
    ids, mask = layout.encoder_inputs(histories, recommender.codes)
    enc = decoder.encode(ids.to(device), mask.to(device)).select(
        torch.arange(batch, device=device).repeat_interleave(width))
    codes = torch.from_numpy(recommender.codes[np.maximum(items, 0).reshape(-1)]).to(device)  # [B*D, P]
    tokens = torch.full((batch * width,), PAD, dtype=torch.long, device=device)
    total = torch.zeros(batch * width, device=device)
    cache = DecoderCache()
    for t in range(layout.n_positions):
        out, cache = decoder.step(tokens, cache, enc)
        logp = F.log_softmax(out.logits[:, layout.position_slice(t)].float(), dim=-1)
        total += logp.gather(1, codes[:, t : t + 1]).squeeze(1)
        tokens = codes[:, t] + layout.offsets[t]
    mean = (total / layout.n_positions).view(batch, width).cpu()
    return mean.masked_fill(torch.from_numpy(items == PAD_ITEM), float("-inf"))


def compose(spec: Speculation, threshold: float, k: int) -> np.ndarray:
    """Accepted drafts (loglik >= threshold, best first), then beams not already listed -> [n, k] item indices,
    PAD_ITEM where fewer than k items remain."""
    order = np.argsort(-spec.loglik, axis=1, kind="stable")
    drafts = np.take_along_axis(spec.drafts, order, axis=1)
    accepted = np.take_along_axis(spec.loglik, order, axis=1) >= threshold
    cand = np.concatenate([np.where(accepted & (drafts != PAD_ITEM), drafts, PAD_ITEM), spec.beams], axis=1)
    width = cand.shape[1]
    earlier = np.tril(np.ones((width, width), dtype=bool), k=-1)  # [j, i]: i comes before j
    repeat = ((cand[:, :, None] == cand[:, None, :]) & earlier[None]).any(axis=2)
    keep = (cand != PAD_ITEM) & ~repeat
    first = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    out = np.where(np.take_along_axis(keep, first, axis=1), np.take_along_axis(cand, first, axis=1), PAD_ITEM)
    if out.shape[1] < k:
        out = np.concatenate([out, np.full((len(out), k - out.shape[1]), PAD_ITEM, np.int64)], axis=1)
    return out.astype(np.int64)


class SpecGR(Baseline):
    name = "specgr"
    config_class = SpecGRConfig

    def __init__(self, cfg: SpecGRConfig | None = None) -> None:
        super().__init__(cfg)
        self.recommender: Recommender | None = None
        self.unit_embeddings: torch.Tensor | None = None
        self.decode = DecodeConfig()
        self.threshold = self.cfg.threshold

    def attach(self, recommender: Recommender, embeddings: np.ndarray, decode: DecodeConfig) -> "SpecGR":
        """Use ``recommender`` to verify and fill, ``embeddings`` [n_items, d] to draft, ``decode`` for beams."""
        if len(embeddings) != len(recommender.codes):
            raise ArtifactMismatchError(f"{len(embeddings)} item embeddings for a catalog of "
                                        f"{len(recommender.codes)} items")
        emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32), device=recommender.device)
        self.unit_embeddings = F.normalize(emb, dim=1)
        self.recommender, self.decode = recommender, decode
        return self

    def fit(self, run: LoadedRun, out_dir: Path | None = None) -> FitResult:
        """Attach to ``run``'s unedited model; choose the threshold on its validation cases (or reuse one saved in
        ``out_dir`` for the same config, data and base model)."""
        self.attach(run.recommender, run.prepared.embeddings, run.config.decode)
        fingerprint = f"{BaselineData.from_run(run).fingerprint()}-{run.base_hash}"
        meta = read_fit(out_dir) if out_dir is not None else None
        if can_reuse(meta, self.name, self.cfg, fingerprint):
            self.restore(meta, Path(out_dir), run)
            self.fit_result.reused = True
            return self.fit_result
        if self.cfg.threshold is None:
            self.tune(run.prepared.split.valid)
        if out_dir is not None:
            write_fit(out_dir, {**self.describe(), "threshold": self.threshold, "fingerprint": fingerprint})
        return self.fit_result

    def tune(self, valid: CaseSet) -> float:
        """Choose the threshold maximising NDCG@10 on a seeded sample of ``valid``; ties go to the higher one."""
        rng = np.random.default_rng(self.cfg.seed)
        idx = np.sort(rng.choice(len(valid), size=min(self.cfg.tune_cases, len(valid)), replace=False))
        cases = valid.subset(idx)
        spec = self.speculate(cases.histories, 10)
        finite = spec.loglik[np.isfinite(spec.loglik)]
        grid = np.quantile(finite, np.linspace(0, 1, self.cfg.tune_grid)) if finite.size else np.zeros(0)
        grid = np.unique(np.concatenate([[-np.inf], grid, [np.inf]]))
        table = [(float(t), float(ndcg_at(target_ranks(compose(spec, t, 10), cases.targets), 10).mean()))
                 for t in grid]
        best = max(table, key=lambda row: (row[1], row[0]))
        self.threshold = best[0]
        self.fit_result = FitResult(best_valid_ndcg10=best[1],
                                    history=[{"threshold": t, "valid_ndcg@10": v} for t, v in table])
        return self.threshold

    def draft(self, histories: np.ndarray) -> np.ndarray:
        """[B, L] histories -> [B, D] the most text-similar items to the recent history (PAD_ITEM: none)."""
        hist = torch.from_numpy(histories[:, -self.cfg.draft_history :]).to(self.unit_embeddings.device)
        real = hist != PAD_ITEM
        vec = (self.unit_embeddings[hist.clamp(min=0)] * real[..., None]).sum(dim=1)
        sims = F.normalize(vec, dim=1) @ self.unit_embeddings.T  # [B, n_items]
        if self.cfg.exclude_history:
            full = torch.from_numpy(histories).to(sims.device)
            rows = torch.arange(len(full), device=sims.device)[:, None].expand_as(full)
            sims[rows[full != PAD_ITEM], full[full != PAD_ITEM]] = float("-inf")
        sims[~real.any(dim=1)] = float("-inf")
        top, idx = sims.topk(min(self.cfg.draft_size, sims.shape[1]), dim=1)
        return torch.where(torch.isfinite(top), idx, PAD_ITEM).cpu().numpy().astype(np.int64)

    def speculate(self, histories: np.ndarray, k: int) -> Speculation:
        """Drafts, their likelihoods and the TIGER top-k beams of every history, in batches."""
        if self.recommender is None:
            raise ArtifactMismatchError("SpecGR is not attached to a model: call fit() or attach() first")
        decode = replace(self.decode, k=k, beam=max(self.decode.beam, k))
        beams = self.recommender.recommend(histories, decode).items.numpy()
        drafts, loglik = [], []
        starts = range(0, len(histories), self.cfg.batch_size)
        for start in tqdm(starts, desc="SpecGR verify", unit="batch", leave=False):
            part = histories[start : start + self.cfg.batch_size]
            drafts.append(self.draft(part))
            loglik.append(sid_log_likelihood(self.recommender, part, drafts[-1]).numpy())
        if not drafts:
            return Speculation(np.zeros((0, 1), np.int64), np.zeros((0, 1)), beams)
        return Speculation(np.concatenate(drafts), np.concatenate(loglik), beams)

    def recommend(self, cases: CaseSet, k: int) -> np.ndarray:
        """[n_cases, k]: accepted drafts first (by likelihood), then the TIGER beams."""
        if self.threshold is None:
            raise ArtifactMismatchError("SpecGR has no threshold: give one in the config or call fit() to tune it")
        return compose(self.speculate(cases.histories, k), self.threshold, k)

    def restore(self, meta: dict, out_dir: Path, run: LoadedRun | None) -> None:
        if run is None:
            raise ArtifactMismatchError("SpecGR needs the run it verifies with to be restored")
        if self.recommender is None:
            self.attach(run.recommender, run.prepared.embeddings, run.config.decode)
        self.threshold = float(meta["threshold"])
        self.fit_result = FitResult(**meta.get("fit", {}))
