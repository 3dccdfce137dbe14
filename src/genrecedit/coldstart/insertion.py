"""Calibrated insertion: a new item enters the beam's list where the odds that it is the user's next item beat those
of the warm item it would displace.

For a history h a text retriever proposes the ``candidates`` new items closest to h's content (the mean embedding
of its last ``recent`` items, cosine); an item already in h is never proposed. Two logistic models, fitted on
validation cases, turn what the backbone and the text say into log-odds that an item is the next one:

- a proposed new item c (``NEW_FEATURES``): its similarity s(h, c), its gap to the best proposal's, its rank among
  the proposals, whether h ends with a new item (alone and times s), the beam's probability mass in c's SID subtree
  at depth 1 and 2 (relative to the beam's whole mass: does the backbone expect this kind of item?), the beam's top
  score and whole mass, and the best proposal's similarity;
- the beam's r-th item (``WARM_FEATURES``): its log-probability (alone and relative to the beam's mass), its rank,
  whether h ends with a new item (alone and times the log-probability), the best proposal's similarity and the
  beam's top score.

The beam's items keep their order (their log-odds are made non-increasing down the list), or, with ``rerank``, the
warm model also reads each beam item's own similarity to h's content and whether h holds it already
(``RERANK_FEATURES``) and the beam's items are ordered by their log-odds: a warm item the text supports rises from
the beam's lower ranks. With ``popularity`` as well, the re-ranking warm model reads each beam item's log-count of
interactions, over the whole period and its latest stretch (``POPULARITY_FEATURES``): a beam item the backbone ranks
low but many users have lately taken rises. It is fitted on validation cases with the training period's counts (what
was known before any of them), and the fitted model carries the counts known by its last validation case (the
validation period's warm interactions added, the "lately" stretch moved to its end): what it is served with, by the
service and ``evaluate`` alike; an item added later counts 0. Counts that stop at training would grow a period staler
between fitting and serving (a forward check inside validation: ``bench/count_refresh.py``).

A proposal is placed above the first beam item whose log-odds is below its own minus a margin (``bias``): the
larger the margin, the surer the text must be before a warm item gives up its place. The margin is chosen on
validation within the warm bound (``genrecedit coldstart``). The features name no item, so nothing is learnt about
any particular new item; the new items' own interactions are never read.

Where it helps most: a history that ends with a new item. The backbone never learnt that item, so its beam is
unsure there, and such users move on to another new item often (a sequel, an edition, a variant of the last one).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from genrecedit.atomic import write_json
from genrecedit.coldstart.exposure import ExposureCap
from genrecedit.coldstart.prior import content_vectors, normalized
from genrecedit.data.dataset import PAD_ITEM, ends_with
from genrecedit.errors import ConfigError
from genrecedit.model.beam import Beams

NEW_FEATURES = ("sim", "sim_gap", "log_rank", "first", "novel_last", "novel_last_sim", "subtree_mass_1",
                "subtree_mass_2", "beam_top", "beam_mass", "best_sim")
WARM_FEATURES = ("score", "score_rel", "log_rank", "first", "novel_last", "novel_last_score", "best_sim", "beam_top")
# what a re-ranking warm model reads besides (``InsertionConfig.rerank``): the beam item's own similarity to the
# history's content, its gap to the beam's most similar item's, that similarity where h ends with a new item, and
# whether the item is in h already
RERANK_FEATURES = ("sim", "sim_gap", "novel_last_sim", "seen")
# what a re-ranking warm model with ``InsertionConfig.popularity`` reads besides: the beam item's log(1 + count) of
# interactions, whole period and its latest stretch (the columns of ``runs.coldstart.item_counts``)
POPULARITY_FEATURES = ("log_count", "log_count_recent")
CHUNK_ROWS = 1024  # histories whose similarities to every new item are computed at once
FLOOR = -50.0  # the log-probability feature of an empty beam slot (which is never ranked)


@dataclass
class InsertionConfig:
    """What calibrated insertion reads and how sure the text must be (chosen on validation)."""

    recent: int = 1  # the history's content: the mean embedding of its last `recent` items
    candidates: int = 10  # new items proposed per history
    bias: float = 2.5  # the margin (in log-odds) a proposal must clear above the beam item it displaces
    c: float = 1.0  # inverse L2 strength of the logistic fits
    width: int | None = None  # the beam lists' length the models were fitted on (their features depend on it)
    rerank: bool = False  # the beam's items are re-ordered by their log-odds, which then read RERANK_FEATURES too
    popularity: bool = False  # a re-ranking warm model reads POPULARITY_FEATURES too (needs rerank)
    # the largest share of served top-10 lists one new item may enter, held as lists are served
    # (``coldstart.exposure.ExposureCap``; ``genrecedit coldstart`` sets the bound it selected with); None: no cap
    cap: float | None = None

    def __post_init__(self) -> None:
        if self.recent < 1:
            raise ConfigError(f"insertion.recent must be ≥ 1, got {self.recent}")
        if self.candidates < 1:
            raise ConfigError(f"insertion.candidates must be ≥ 1, got {self.candidates}")
        if not self.c > 0:
            raise ConfigError(f"insertion.c must be > 0, got {self.c}")
        if self.width is not None and self.width < 1:
            raise ConfigError(f"insertion.width must be ≥ 1, got {self.width}")
        if self.popularity and not self.rerank:
            raise ConfigError("insertion.popularity is read by a re-ranking warm model: set insertion.rerank too")
        if self.cap is not None and not 0 < self.cap <= 1:
            raise ConfigError(f"insertion.cap must be in (0, 1], got {self.cap}")

    def exposure_cap(self) -> ExposureCap | None:
        """A fresh cap at ``cap`` (None: uncapped); its state is the lists served through it."""
        return None if self.cap is None else ExposureCap(self.cap)


def warm_features(cfg: InsertionConfig) -> tuple[str, ...]:
    """The features the warm model of ``cfg`` reads (``Proposals.warm_x``)."""
    if not cfg.rerank:
        return WARM_FEATURES
    return WARM_FEATURES + RERANK_FEATURES + (POPULARITY_FEATURES if cfg.popularity else ())


def popularity_features(counts: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[..., 2] log(1 + count) of ``items`` [...] in ``counts`` [n_items, 2] (an empty slot, or an item the counts
    do not cover — added after the model was fitted — counts 0)."""
    counts = np.asarray(counts)
    known = (items >= 0) & (items < len(counts))
    out = np.log1p(counts[np.clip(items, 0, len(counts) - 1)].astype(np.float64))
    return np.where(known[..., None], out, 0.0)


@dataclass
class LogOdds:
    """A fitted logistic model over standardised features: [..., f] -> [...] log-odds."""

    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef) + self.intercept

    @staticmethod
    def fit(x: np.ndarray, y: np.ndarray, c: float) -> "LogOdds":
        """x [n, f], y [n] in {0, 1} (both classes present)."""
        from sklearn.linear_model import LogisticRegression

        if y.min() == y.max():
            raise ConfigError("calibrated insertion needs validation cases whose next item is among the proposals "
                              "and cases where it is not; there are none of one kind")
        mean, scale = x.mean(0), x.std(0) + 1e-9
        model = LogisticRegression(C=c, max_iter=2000).fit((x - mean) / scale, y)
        return LogOdds(mean.tolist(), scale.tolist(), model.coef_[0].tolist(), float(model.intercept_[0]))


@dataclass
class Proposals:
    """Per history: the proposed new items [n, J] (-1: none), their features [n, J, len(NEW_FEATURES)], the beam's
    items [n, K] (-1: empty slot), their features [n, K, len(WARM_FEATURES)] and what a re-ranking warm model reads
    besides, [n, K, len(RERANK_FEATURES)] (None: not computed)."""

    items: np.ndarray
    features: np.ndarray
    beam_items: np.ndarray
    beam_features: np.ndarray
    beam_content: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.items)

    def rows(self, mask: np.ndarray) -> "Proposals":
        return Proposals(self.items[mask], self.features[mask], self.beam_items[mask], self.beam_features[mask],
                         None if self.beam_content is None else self.beam_content[mask])

    def warm_x(self, cfg: InsertionConfig, counts: np.ndarray | None = None) -> np.ndarray:
        """[n, K, f] what the warm model of ``cfg`` reads (``counts``: the items' interaction counts [n_items, 2],
        needed with ``cfg.popularity``)."""
        if not cfg.rerank:
            return self.beam_features
        if self.beam_content is None:
            raise ConfigError("a re-ranking insertion needs the beam items' content features (propose computes them)")
        parts = [self.beam_features, self.beam_content]
        if cfg.popularity:
            if counts is None:
                raise ConfigError("an insertion with popularity needs the items' interaction counts")
            parts.append(popularity_features(counts, self.beam_items))
        return np.concatenate(parts, -1)

    def labels(self, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[n, J], [n, K] bool: which proposal / beam item is the case's next item."""
        return self.items == targets[:, None], self.beam_items == targets[:, None]


def propose(embeddings: np.ndarray, codes: np.ndarray, new_items: np.ndarray, histories: np.ndarray, beams: Beams,
            recent: int, candidates: int, unit: torch.Tensor | None = None, content: bool = True) -> Proposals:
    """The proposals and both feature sets for [n, L] left-padded ``histories`` and their unedited ``beams``
    (no new item: no proposal, J = 0; the beam's features still matter to a re-ranking model).
    ``unit``: ``normalized(embeddings)`` when the caller holds it already (a service snapshot binds it once);
    ``content``: compute what a re-ranking warm model reads besides (``Proposals.beam_content``; False: None)."""
    new_items = np.unique(np.asarray(new_items, np.int64))
    unit = normalized(embeddings) if unit is None else unit
    parts = [_propose_rows(unit, np.asarray(codes), new_items, np.asarray(histories)[s:s + CHUNK_ROWS],
                           beams.items[s:s + CHUNK_ROWS].numpy(), beams.scores[s:s + CHUNK_ROWS].double().numpy(),
                           recent, min(candidates, len(new_items)), content)
             for s in range(0, len(histories), CHUNK_ROWS)]
    return Proposals(*(np.concatenate([p[i] for p in parts]) for i in range(4)),
                     np.concatenate([p[4] for p in parts]) if content else None)


def _propose_rows(unit: torch.Tensor, codes: np.ndarray, new_items: np.ndarray, histories: np.ndarray,
                  items: np.ndarray, scores: np.ndarray, recent: int, j: int, content_features: bool) -> tuple:
    content = content_vectors(unit, histories, recent)
    sims = (content @ unit[new_items].T).numpy()  # [n, m]
    if len(new_items):
        col = np.searchsorted(new_items, np.clip(histories, 0, None))
        seen = (histories != PAD_ITEM) & (new_items[np.clip(col, 0, len(new_items) - 1)] == histories)
        rows = np.broadcast_to(np.arange(len(histories))[:, None], histories.shape)
        sims[rows[seen], col[seen]] = -np.inf  # a history's own items are not proposed again
    top = np.argpartition(-sims, j - 1, axis=1)[:, :j] if j else np.zeros((len(histories), 0), np.int64)
    sim = np.take_along_axis(sims, top, 1)
    order = np.argsort(-sim, axis=1, kind="stable")
    sim, cand = np.take_along_axis(sim, order, 1), new_items[np.take_along_axis(top, order, 1)]
    cand = np.where(np.isfinite(sim), cand, -1)
    sim = np.where(np.isfinite(sim), sim, -1.0)

    present = items >= 0
    score = np.where(present & np.isfinite(scores), scores, FLOOR)
    mass = np.logaddexp.reduce(np.where(present, score, -np.inf), axis=1)
    mass = np.where(np.isfinite(mass), mass, FLOOR)
    top1 = score[:, 0]
    novel_last = ends_with(histories, new_items).astype(np.float64)
    best = sim[:, :1] if j else np.full((len(histories), 1), -1.0)  # no proposal: as an empty slot's
    rank = np.arange(j, dtype=np.float64)[None].repeat(len(cand), 0)
    new_f = np.stack([sim, sim - best, np.log1p(rank), rank == 0, np.broadcast_to(novel_last[:, None], sim.shape),
                      novel_last[:, None] * sim,
                      _subtree_mass(codes, items, score, cand, 1) - mass[:, None],
                      _subtree_mass(codes, items, score, cand, 2) - mass[:, None],
                      np.broadcast_to(top1[:, None], sim.shape), np.broadcast_to(mass[:, None], sim.shape),
                      np.broadcast_to(best, sim.shape)], -1).astype(np.float64)
    k = items.shape[1]
    beam_rank = np.arange(k, dtype=np.float64)[None].repeat(len(items), 0)
    warm_f = np.stack([score, score - mass[:, None], np.log1p(beam_rank), beam_rank == 0,
                       np.broadcast_to(novel_last[:, None], score.shape), novel_last[:, None] * score,
                       np.broadcast_to(best, score.shape), np.broadcast_to(top1[:, None], score.shape)],
                      -1).astype(np.float64)
    if not content_features:
        return cand, new_f, items, warm_f, None
    beam_sim = torch.einsum("nkd,nd->nk", unit[torch.as_tensor(np.clip(items, 0, None))], content).double().numpy()
    beam_sim = np.where(present, beam_sim, -1.0)
    in_history = (items[:, :, None] == histories[:, None, :]).any(2) & present
    content_f = np.stack([beam_sim, beam_sim - beam_sim.max(1, keepdims=True), novel_last[:, None] * beam_sim,
                          in_history], -1).astype(np.float64)
    return cand, new_f, items, warm_f, content_f


def _subtree_mass(codes: np.ndarray, items: np.ndarray, score: np.ndarray, cand: np.ndarray, depth: int) -> np.ndarray:
    """[n, J] log of the beam's probability mass under each proposal's first ``depth`` SID codes (FLOOR: none)."""
    depth = min(depth, codes.shape[1])
    beam_codes = np.where((items >= 0)[:, :, None], codes[np.clip(items, 0, None)][:, :, :depth], -1)
    cand_codes = codes[np.clip(cand, 0, None)][:, :, :depth]
    same = (beam_codes[:, None, :, :] == cand_codes[:, :, None, :]).all(-1)  # [n, J, K]
    out = np.logaddexp.reduce(np.where(same, score[:, None, :], -np.inf), axis=2)
    return np.where(np.isfinite(out), out, FLOOR)


@dataclass
class CalibratedInsertion:
    """Fitted calibrated insertion: its settings, the two log-odds models and, with ``cfg.popularity``, the
    interaction counts [n_items, 2] its warm model reads when it ranks (whole period, latest stretch)."""

    cfg: InsertionConfig
    new_odds: LogOdds
    warm_odds: LogOdds
    counts: np.ndarray | None = None

    @staticmethod
    def fit(proposals: Proposals, targets: np.ndarray, cfg: InsertionConfig,
            counts: np.ndarray | None = None) -> "CalibratedInsertion":
        """Fit both models on validation ``proposals`` and their cases' next items ``targets`` [n] (``counts``:
        the items' counts known before those cases, needed with ``cfg.popularity``, kept with the model; the
        counts it is served with may replace them: ``dataclasses.replace``)."""
        is_new, is_warm = proposals.labels(np.asarray(targets))
        have = proposals.items >= 0
        present = proposals.beam_items >= 0
        counts = np.asarray(counts, np.int64) if cfg.popularity and counts is not None else None
        return CalibratedInsertion(
            cfg, LogOdds.fit(proposals.features[have], is_new[have].astype(int), cfg.c),
            LogOdds.fit(proposals.warm_x(cfg, counts)[present], is_warm[present].astype(int), cfg.c), counts)

    def rank(self, proposals: Proposals, k: int, bias: float | None = None, cap: ExposureCap | None = None,
             new_items: np.ndarray | None = None, order: np.ndarray | None = None,
             key: Callable[[int], Hashable] | None = None, exclude: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """The merged top ``k``: items [n, k] (-1: empty) and their ranking keys [n, k] (log-odds; a proposal's
        less the margin), best first; ``bias`` overrides the configured margin. With ``cap`` the lists are served
        through it in ``order`` (default: row order; ``key``, ``exclude``: ``ExposureCap.select``): a proposal,
        and a beam item among ``new_items``, counts as a new item."""
        bias = self.cfg.bias if bias is None else bias
        warm = np.where(proposals.beam_items >= 0, self.warm_odds(proposals.warm_x(self.cfg, self.counts)), -np.inf)
        if not self.cfg.rerank:
            warm = np.minimum.accumulate(warm, axis=1)  # the beam's order is kept
            warm = warm - 1e-9 * np.arange(warm.shape[1])[None]  # ties keep it too
        new = self.new_odds(proposals.features) - bias
        in_beam = (proposals.items[:, :, None] == proposals.beam_items[:, None, :]).any(2)
        new = np.where((proposals.items >= 0) & ~in_beam, new, -np.inf)
        keys = np.concatenate([warm, new], 1)
        items = np.concatenate([proposals.beam_items, proposals.items], 1)
        if cap is not None:
            beam_new = np.isin(proposals.beam_items, np.asarray(new_items if new_items is not None else [], np.int64))
            is_new = np.concatenate([beam_new & (proposals.beam_items >= 0), proposals.items >= 0], 1)
            return cap.select(keys, items, is_new, k, order, key, exclude)
        pick = np.argsort(-keys, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(keys, pick, 1)
        return np.where(np.isfinite(best), np.take_along_axis(items, pick, 1), -1), best

    def apply(self, embeddings: np.ndarray, codes: np.ndarray, new_items: np.ndarray, histories: np.ndarray,
              beams: Beams, k: int | None = None, unit: torch.Tensor | None = None, cap: ExposureCap | None = None,
              order: np.ndarray | None = None, key: Callable[[int], Hashable] | None = None,
              exclude: np.ndarray | None = None) -> Beams:
        """The merged lists as ``Beams`` (scores: the calibrated log-probability of each entry's ranking key);
        ``unit``: the embeddings normalised already (``propose``); ``cap``: the lists served through it in
        ``order``, without each row's ``exclude`` (``rank``)."""
        k = beams.items.shape[1] if k is None else k
        if self.cfg.width is not None and beams.items.shape[1] != self.cfg.width:
            raise ConfigError(f"calibrated insertion was fitted on lists of {self.cfg.width} beam items, got "
                              f"{beams.items.shape[1]}: decode with k={self.cfg.width}")
        if len(histories) == 0 or (len(new_items) == 0 and not self.cfg.rerank):
            return beams.head(k)
        items, keys = self.rank(propose(embeddings, codes, new_items, histories, beams, self.cfg.recent,
                                        self.cfg.candidates, unit, content=self.cfg.rerank), k, cap=cap,
                                new_items=new_items, order=order, key=key, exclude=exclude)
        return Beams.of_items(items, np.where(items >= 0, -np.logaddexp(0.0, -keys), -np.inf), codes)  # log σ(key)

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @staticmethod
    def load(path: Path) -> "CalibratedInsertion":
        try:
            return CalibratedInsertion.of(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConfigError(f"{path}: not a fitted calibrated insertion ({err})") from err

    def to_dict(self) -> dict:
        out = {"config": asdict(self.cfg), "new_odds": asdict(self.new_odds), "warm_odds": asdict(self.warm_odds),
               "new_features": list(NEW_FEATURES), "warm_features": list(warm_features(self.cfg))}
        if self.counts is not None:
            out["counts"] = np.asarray(self.counts).tolist()
        return out

    @staticmethod
    def of(data: dict) -> "CalibratedInsertion":
        cfg = InsertionConfig(**data["config"])
        if data.get("new_features", list(NEW_FEATURES)) != list(NEW_FEATURES) or \
                data.get("warm_features", list(warm_features(cfg))) != list(warm_features(cfg)):
            raise ConfigError("this calibrated insertion was fitted on other features; run `genrecedit coldstart` "
                              "again")
        counts = None
        if cfg.popularity:
            counts = np.asarray(data.get("counts", []), np.int64)
            if counts.ndim != 2 or counts.shape[1] != len(POPULARITY_FEATURES) or (counts < 0).any():
                raise ConfigError(f"an insertion with popularity needs its items' interaction counts [n_items, "
                                  f"{len(POPULARITY_FEATURES)}], got shape {counts.shape}")
        return CalibratedInsertion(cfg, LogOdds(**data["new_odds"]), LogOdds(**data["warm_odds"]), counts)


def half_models(proposals: Proposals, targets: np.ndarray, times: np.ndarray, cfg: InsertionConfig,
                counts: np.ndarray | None = None) -> list[tuple[np.ndarray, "CalibratedInsertion"]]:
    """The validation period split at its median time: per half, (its cases' mask, the models fitted on the other
    half), so that every case is ranked by models no case of its own half was fitted on (``counts``: as ``fit``)."""
    later = np.zeros(len(times), bool)
    later[np.argsort(times, kind="stable")[len(times) // 2:]] = True
    return [(held, CalibratedInsertion.fit(proposals.rows(~held), targets[~held], cfg, counts))
            for held in (later, ~later) if held.any()]


def cross_fitted(proposals: Proposals, targets: np.ndarray, times: np.ndarray, cfg: InsertionConfig,
                 biases: tuple[float, ...], k: int, counts: np.ndarray | None = None) -> dict[float, np.ndarray]:
    """Validation lists [n, k] for each margin in ``biases``, every case ranked by models fitted on the other half
    of the period (``half_models``): the margin is then chosen on lists no model was fitted on."""
    lists = {b: np.full((len(times), k), -1, dtype=np.int64) for b in biases}
    for held, model in half_models(proposals, targets, times, cfg, counts):
        part = proposals.rows(held)
        for b in biases:
            lists[b][held] = model.rank(part, k, b)[0]
    return lists
