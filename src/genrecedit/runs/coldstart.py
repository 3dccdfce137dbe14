"""Text-only cold start on a trained run: choose the content prior (and every baseline's setting) on validation,
then score the chosen recipe and the baselines side by side on test, with paired intervals and exposure.

Selection (``select_coldstart``) decodes validation cases only and never touches the test split; ``coldstart``
reports on test what selection chose. The new items are every catalog item absent from training; only their text is
used (no interaction of a new item is read anywhere here).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from genrecedit.atomic import write_json
from genrecedit.coldstart.baselines import dense_rerank, reserved_slots, retrieve
from genrecedit.coldstart.exposure import exposure
from genrecedit.coldstart.insertion import CalibratedInsertion, InsertionConfig, cross_fitted, propose
from genrecedit.coldstart.prior import ContentPrior, PriorConfig
from genrecedit.data.dataset import PAD_ITEM, CaseSet
from genrecedit.edit.artifact import EditArtifact
from genrecedit.errors import ConfigError
from genrecedit.evaluation.bootstrap import paired_bootstrap_diff
from genrecedit.evaluation.report import EvalResult, format_table, write_metrics
from genrecedit.model.beam import Beams
from genrecedit.config import RunConfig, load_config
from genrecedit.runs.backbone import CONFIG_FILE, LoadedRun
from genrecedit.runs.evaluate import score_topk

CUT = 10  # the metrics and exposure that select and report: @10
PRIOR, INSERTION = "content prior (chosen)", "calibrated insertion (chosen)"  # the report's rows of the recipes
INSERTION_FILE = "insertion.json"  # a run's adopted calibrated insertion (config.insertion names it)


@dataclass
class PriorGrid:
    """The content-prior settings tried on validation (every combination)."""

    scope: tuple[int, ...] = (0, 1)
    recent: tuple[int, ...] = (1, 3)
    threshold: tuple[float, ...] = (0.5, 0.8)
    temperature: tuple[float, ...] = (0.1, 0.2)
    budget: tuple[float, ...] = (0.01, 0.15, 0.4)
    novel_budget: tuple[float | None, ...] = (None, 0.4, 0.8, 0.95)  # None: β for every history
    head: tuple[int, ...] = (0, 1, 2, 3)  # scored from one mixture each: heads cost no extra mixing

    def mixtures(self, n_positions: int) -> list[PriorConfig]:
        """Every combination but ``head`` (head 0), grouped by (scope, recent): the mixtures to compute."""
        return [PriorConfig(True, b, t, th, sc, r, nb) for sc, r, th, t, b, nb in itertools.product(
            self.scope, self.recent, self.threshold, self.temperature, self.budget, self.novel_budget)
            if sc < n_positions and (nb is None or nb > b)]

    def cells(self, n_positions: int) -> list[PriorConfig]:
        return [replace(cfg, head=h) for cfg in self.mixtures(n_positions) for h in self.head]


@dataclass
class Bounds:
    """What a shipped setting must keep on validation: the warm NDCG@10 drop and the largest share of lists any one
    new item enters.

    ``stratified`` (the default) chooses a setting per stratum, the history's last item new or not
    (``PriorConfig.novel``), each the best of the grid within the bounds on that stratum's validation cases alone:
    a mixture of two lists that each keep the bound keeps it at any share of the two, so nothing about the next
    period's mix has to be guessed. Otherwise one setting serves every history and its drop is held at a planned
    mix: the warm drop is held for the request mix of the next period, not validation's average: the prior moves most
    where a history ends with a new item (there it replaces much of the list; elsewhere it moves almost nothing),
    and that share grows as new items accumulate (game: 3 % of warm validation cases in the period's first tenth,
    16 % in its last). So the drop is estimated per stratum (the history's last item new or not) and mixed at the
    strata's share in the latest ``plan_window`` of the validation period (None: validation's own mix).
    ``upper``: the bound holds for the upper end of that estimate's 95 % bootstrap interval (cases resampled within
    each stratum), not only for the estimate — the best of hundreds of cells is the one whose validation drop came
    out luckiest."""

    max_warm_drop: float = 0.03
    max_item_share: float = 0.05
    upper: bool = True
    plan_window: float | None = 0.2
    # one setting per stratum, each within the bounds on its own stratum's validation cases: the bound then holds
    # at any mix of the two (False: one setting for every history, held at the planned mix)
    stratified: bool = True
    plan_trend: bool = False  # plan at the share's trend extrapolated to the middle of the next period (WarmPlan.of)
    # stratified: hold the bound for the two strata together at the planned mix instead of within each stratum, so
    # the stratum that carries little of the warm NDCG (histories ending with a new item) may spend more of it
    allocate: bool = False


@dataclass
class InsertionGrid:
    """Calibrated insertion's settings tried on validation: the history's content and the margin."""

    recent: tuple[int, ...] = (1, 3)
    bias: tuple[float, ...] = tuple(0.25 * i for i in range(25))  # 0 … 6 log-odds
    candidates: int = 10


@dataclass
class ColdstartSpec:
    grid: PriorGrid = field(default_factory=PriorGrid)
    insertion: InsertionGrid | None = field(default_factory=InsertionGrid)  # None: calibrated insertion not tried
    bounds: Bounds = field(default_factory=Bounds)
    valid_max_cases: int | None = None  # a seeded sample of validation cases for selection (None: all of them)
    slots: tuple[int, ...] = tuple(range(1, CUT))  # reserved-slot hybrid: s tried on validation
    recent: tuple[int, ...] = (1, 3)  # the baselines' history content: last item, mean of the last 3


def new_items(run: LoadedRun) -> np.ndarray:
    """The items a text-only cold start recommends: every catalog item absent from training (read from the warm
    flags, never from a case set)."""
    return np.flatnonzero(~run.prepared.split.warm)


def selection_cases(run: LoadedRun, limit: int | None, whole: bool) -> CaseSet:
    """Validation cases (a seeded sample of ``limit``). ``whole``: the whole validation period — right for the prior
    alone, whose knowledge is text only; else, with observed knowledge configured (an edit that learnt from the
    period's first half), its second half only."""
    from genrecedit.runs.evaluate import evaluation_cases

    if whole:  # the prior reads no interaction of a new item: no half of the period is knowledge
        run = run.with_settings("knowledge", source="pseudo")
    return evaluation_cases(run.with_settings("eval", cases="valid", max_cases=limit))


def decode(run: LoadedRun, cases: CaseSet, artifact: EditArtifact | None, desc: str) -> Beams:
    schedule = artifact.schedule(run.config.eval.trigger, run.recommender.device) if artifact is not None else None
    return run.recommender.recommend(cases.histories, run.config.decode, schedule, progress=desc, record_levels=True)


def make_prior(run: LoadedRun, cfg: PriorConfig) -> ContentPrior:
    return ContentPrior(cfg, run.prepared.embeddings, run.prepared.codes, new_items(run), run.recommender.trie)


def _row(result: EvalResult, topk: np.ndarray, new: np.ndarray, base: EvalResult | None) -> dict:
    summary = result.summary()
    row = {s: {m: summary[s][m] for m in (f"recall@{CUT}", f"ndcg@{CUT}")} | {"n_cases": summary[s]["n_cases"]}
           for s in summary}
    row["exposure"] = exposure(topk, new, CUT)
    if base is not None:
        b = base.summary()["warm"][f"ndcg@{CUT}"] or 0.0
        row["warm_drop"] = 1 - (row["warm"][f"ndcg@{CUT}"] or 0.0) / max(b, 1e-12)
    return row


def _admissible(row: dict, bounds: Bounds) -> bool:
    drop = row["warm_drop_planned"][1 if bounds.upper else 0]
    return (drop is not None and drop <= bounds.max_warm_drop
            and row["exposure"]["max_item_share"] <= bounds.max_item_share)


@dataclass
class WarmPlan:
    """Validation's warm cases in strata (``novel``: the history's last item is new) and the share of the novel
    stratum the bound is held at (``share``)."""

    novel: np.ndarray  # [n_warm] bool, in the order of EvalResult.per_case(..., "warm")
    share: float

    @staticmethod
    def of(cases: CaseSet, new: np.ndarray, cold: np.ndarray, window: float | None,
           trend: bool = False) -> "WarmPlan":
        """``trend``: the share where its straight-line trend over the validation period (warm cases by time)
        reaches the middle of a next period as long, and never below the latest window's share."""
        last = cases.histories[:, -1]
        novel = np.isin(last, new) & (last != PAD_ITEM)
        warm = ~cold
        if window is None:
            recent = warm
        else:
            if not 0 < window <= 1:
                raise ConfigError(f"bounds.plan_window must be in (0, 1] or null, got {window}")
            cut = np.quantile(cases.timestamps[warm], 1 - window) if warm.any() else 0.0
            recent = warm & (cases.timestamps >= cut)
        share = float(novel[recent].mean()) if recent.any() else 0.0
        if trend and warm.sum() > 1:
            share = max(share, trend_share(cases.timestamps[warm], novel[warm]))
        return WarmPlan(novel[warm], share)

    def drop(self, result: EvalResult, base: EvalResult, below: float = float("inf"), n_boot: int = 1000,
             seed: int = 0) -> tuple[float, float | None]:
        """(estimate, upper end of its 95 % interval) of the warm NDCG@10 drop at the planned mix: per stratum the
        mean NDCG@10 of ``result`` and ``base``, mixed with weights (1 − share, share); the interval resamples cases
        within each stratum. The interval is computed only when the estimate is at most ``below`` (else None: it
        could not meet a bound the estimate misses)."""
        a, b = result.per_case(f"ndcg@{CUT}", "warm"), base.per_case(f"ndcg@{CUT}", "warm")
        strata = [(a[m], b[m], w) for m, w in ((~self.novel, 1 - self.share), (self.novel, self.share))
                  if m.any() and w > 0]
        return mixed_drop(strata, below, n_boot, seed)


def trend_share(times: np.ndarray, novel: np.ndarray) -> float:
    """The least-squares line of ``novel`` (0/1) over ``times``, read at the middle of a next period as long as
    theirs (clipped to [0, 1]): where the share of histories ending with a new item is heading."""
    t0, t1 = float(times.min()), float(times.max())
    if t1 <= t0:
        return float(novel.mean())
    slope, intercept = np.polyfit((times - t0) / (t1 - t0), novel.astype(float), 1)
    return float(np.clip(intercept + slope * 1.5, 0.0, 1.0))


def mixed_drop(strata: list[tuple[np.ndarray, np.ndarray, float]], below: float = float("inf"), n_boot: int = 1000,
               seed: int = 0) -> tuple[float, float | None]:
    """(estimate, upper end of its 95 % bootstrap interval) of 1 − Σ w·mean(a) / Σ w·mean(b) over strata
    (a, b, w): per-case NDCG@10 of a system and of the base on one stratum's warm cases, and the stratum's weight.
    Cases are resampled within each stratum; the interval only when the estimate is at most ``below``."""
    if not strata:
        return 0.0, 0.0

    def drop(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.where(den > 0, 1 - num / np.maximum(den, 1e-300), 0.0)

    point = drop(sum(w * a.mean() for a, _, w in strata), sum(w * b.mean() for _, b, w in strata))
    if point > below:
        return float(point), None
    rng = np.random.default_rng(seed)
    num, den = np.zeros(n_boot), np.zeros(n_boot)
    for a, b, w in strata:
        for start in range(0, n_boot, 100):
            idx = rng.integers(0, len(a), size=(min(100, n_boot - start), len(a)))
            num[start:start + len(idx)] += w * a[idx].mean(1)
            den[start:start + len(idx)] += w * b[idx].mean(1)
    return float(point), float(np.quantile(drop(num, den), 0.975))


STRATA = ("rest", "novel")  # the history's last item warm (or none) / new


def strata_masks(histories: np.ndarray, new: np.ndarray) -> dict[str, np.ndarray]:
    last = np.asarray(histories)[:, -1]
    novel = np.isin(last, new) & (last != PAD_ITEM)
    return {"rest": ~novel, "novel": novel}


def strata_rows(result: EvalResult, base: EvalResult, topk: np.ndarray, new: np.ndarray,
                masks: dict[str, np.ndarray], below: float | dict[str, float] = float("inf")) -> dict:
    """Per stratum: cases, overall NDCG@10 of ``result`` and of ``base``, cold recall@10, the warm NDCG@10 drop
    with the upper end of its interval (when the estimate is at most ``below``, one value or one per stratum) and
    exposure on its lists."""
    a, b = result.per_case(f"ndcg@{CUT}", "overall"), base.per_case(f"ndcg@{CUT}", "overall")
    recall = result.per_case(f"recall@{CUT}", "overall")
    warm = ~result.cold_mask
    out = {}
    for name, mask in masks.items():
        if not mask.any():
            continue
        w, c = mask & warm, mask & ~warm
        limit = below.get(name, float("inf")) if isinstance(below, dict) else below
        drop, upper = mixed_drop([(a[w], b[w], 1.0)] if w.any() else [], limit)
        e = exposure(topk[mask], new, CUT)
        out[name] = {"n_cases": int(mask.sum()), "n_warm": int(w.sum()), "ndcg": float(a[mask].mean()),
                     "warm_ndcg": float(a[w].mean()) if w.any() else None,
                     "base_warm_ndcg": float(b[w].mean()) if w.any() else None,
                     "base_ndcg": float(b[mask].mean()), "cold_recall": float(recall[c].mean()) if c.any() else None,
                     "warm_drop": drop, "warm_drop_upper": upper, "max_item_share": e["max_item_share"],
                     "new_item_slot_share": e["new_item_slot_share"]}
    return out


def choose_strata(cells: list[dict], bounds: Bounds) -> dict | None:
    """The stratified setting: per stratum the cell with the best overall NDCG@10 on that stratum's cases among
    those within ``bounds`` there and above the unedited beams there; a stratum with none keeps the beam's lists.
    None when neither stratum has one."""
    best = {}
    for name in STRATA:
        ok = [c for c in cells if name in c["strata"] and _admissible_stratum(c["strata"][name], bounds)]
        best[name] = _best(ok, key=lambda c: c["strata"][name]["ndcg"])
    return _stratified(best["rest"], best["novel"])


def _stratified(rest: dict | None, novel: dict | None) -> dict | None:
    """One prior from a cell per stratum (None: that stratum keeps the beam's lists); None when both are None."""
    if rest is None and novel is None:
        return None
    second = dict(novel["prior"]) if novel is not None else {**asdict(PriorConfig()), "enabled": False}
    top = dict(rest["prior"]) if rest is not None else dict(second)
    return {**top, "enabled": True, "novel": second, "novel_only": rest is None}


def allocate_strata(cells: list[dict], bounds: Bounds, share: float) -> dict | None:
    """The stratified setting with one bound for both strata: the pair of cells (rest, novel; either may be "keep
    the beam's lists") with the best validation NDCG@10 over both strata's cases whose warm NDCG@10 drop, mixed at
    the planned share ``share`` of warm cases whose history ends with a new item, is within ``bounds`` — per
    stratum the upper end of its interval (``bounds.upper``) or the estimate, so the mix of upper ends bounds the
    mix from above. Each stratum is weighed by its share of the base's warm NDCG: where the backbone ranks warm
    items poorly (after a new item), a relative drop costs little. Exposure and "beats the beams" hold per stratum.
    None when no pair beats the beams."""
    key = "warm_drop_upper" if bounds.upper else "warm_drop"
    options: dict[str, list[tuple[dict | None, float, float]]] = {}
    totals = {}  # per stratum: validation cases, the base's mean warm NDCG@10
    for name in STRATA:
        rows = [(c, c["strata"][name]) for c in cells if name in c.get("strata", {})]
        if not rows:
            options[name], totals[name] = [(None, 0.0, 0.0)], (0, 0.0)
            continue
        row0 = rows[0][1]
        totals[name] = (row0["n_cases"], row0["base_warm_ndcg"] or 0.0)
        options[name] = [(None, 0.0, row0["base_ndcg"])] + [
            (c, r[key], r["ndcg"]) for c, r in rows
            if r[key] is not None and r["max_item_share"] <= bounds.max_item_share and r["ndcg"] > r["base_ndcg"]]
    (n_r, bw_r), (n_n, bw_n) = totals["rest"], totals["novel"]
    den = (1 - share) * bw_r + share * bw_n
    m_n = share * bw_n / den if den > 0 else 0.0
    d_r = np.array([o[1] for o in options["rest"]])
    d_n = np.array([o[1] for o in options["novel"]])
    v_r = np.array([o[2] for o in options["rest"]]) * n_r
    v_n = np.array([o[2] for o in options["novel"]]) * n_n
    planned = (1 - m_n) * d_r[:, None] + m_n * d_n[None, :]
    value = np.where(planned <= bounds.max_warm_drop, v_r[:, None] + v_n[None, :], -np.inf)
    value[0, 0] = -np.inf  # both strata on the beam's lists: no prior
    i, j = np.unravel_index(int(np.argmax(value)), value.shape)
    if not np.isfinite(value[i, j]):
        return None
    return _stratified(options["rest"][i][0], options["novel"][j][0])


def _admissible_stratum(row: dict, bounds: Bounds) -> bool:
    drop = row["warm_drop_upper"] if bounds.upper else row["warm_drop"]
    return (drop is not None and drop <= bounds.max_warm_drop and row["max_item_share"] <= bounds.max_item_share
            and row["ndcg"] > row["base_ndcg"])


def _best(cells: list[dict], key=lambda c: c["metrics"]["overall"][f"ndcg@{CUT}"]) -> dict | None:
    return max(cells, key=key, default=None)


def select_coldstart(run: LoadedRun, spec: ColdstartSpec, artifact: EditArtifact | None = None,
                     progress: bool = True, cases: CaseSet | None = None) -> dict:
    """Choose on validation: the content prior (best overall NDCG@10 among the grid's cells within ``spec.bounds``
    that beat the unedited beams), the reserved-slot hybrid's s and recent, the dense re-rank's and the retriever's
    recent (each by overall NDCG@10: the strongest version of each baseline). Decodes validation only (``cases``:
    a subset of it chosen by the caller, e.g. an early window to check a rule on the later one)."""
    if cases is None:
        cases = selection_cases(run, spec.valid_max_cases, whole=artifact is None)
    new = new_items(run)
    t0 = time.perf_counter()
    beams = decode(run, cases, None, "coldstart: validation beams" if progress else False)
    decode_s = time.perf_counter() - t0
    items = beams.items.numpy()  # the unedited beams: the base every warm drop is measured against
    base = score_topk(run, items, cases)
    base_row = _row(base, items, new, base)
    plan = WarmPlan.of(cases, new, base.cold_mask, spec.bounds.plan_window, spec.bounds.plan_trend)
    masks = strata_masks(cases.histories, new)
    edited_row = None
    if artifact is not None:  # the prior then mixes into the edited beams
        beams = decode(run, cases, artifact, "coldstart: validation beams, edited" if progress else False)
        edited_row = _row(score_topk(run, beams.items.numpy(), cases), beams.items.numpy(), new, base)

    def scored(topk: np.ndarray, **what) -> dict:
        return {**what, "metrics": _row(score_topk(run, topk, cases), topk, new, base)}

    cells = []
    mixtures = spec.grid.mixtures(run.prepared.codes.shape[1])
    bar = tqdm(total=len(mixtures) * len(spec.grid.head), desc="coldstart: prior grid", disable=not progress,
               unit="cell")
    for (scope, recent), group in itertools.groupby(mixtures, key=lambda c: (c.scope, c.recent)):
        group = list(group)
        prior = make_prior(run, group[0])  # similarities and prefixes once per (scope, recent)
        prepared = prior.prepare(cases.histories, beams)
        for cfg in group:
            for head, mixed in prior.mix_heads(prepared, items.shape[1], cfg, spec.grid.head).items():
                topk = mixed.items.numpy()
                result = score_topk(run, topk, cases)
                row = _row(result, topk, new, base)
                row["warm_drop_planned"] = plan.drop(result, base, below=spec.bounds.max_warm_drop)
                cell = {"prior": asdict(replace(cfg, head=head)), "metrics": row}
                if spec.bounds.stratified:
                    below = spec.bounds.max_warm_drop  # an interval only where it could meet the bound
                    cell["strata"] = strata_rows(result, base, topk, new, masks, below={
                        "rest": below, "novel": float("inf") if spec.bounds.allocate else below})
                cells.append(cell)
                bar.update()
        del prepared
    bar.close()
    if spec.bounds.stratified:
        prior = allocate_strata(cells, spec.bounds, plan.share) if spec.bounds.allocate else \
            choose_strata(cells, spec.bounds)
        chosen = None
        if prior is not None:  # the two strata's settings together, on the same validation cases
            topk = make_prior(run, PriorConfig.of(prior)).apply(cases.histories, beams).items.numpy()
            result = score_topk(run, topk, cases)
            row = _row(result, topk, new, base)
            row["warm_drop_planned"] = plan.drop(result, base)
            chosen = {"prior": prior, "metrics": row,
                      "strata": strata_rows(result, base, topk, new, masks)}
    else:
        ok = [c for c in cells if _admissible(c["metrics"], spec.bounds)
              and c["metrics"]["overall"][f"ndcg@{CUT}"] > base_row["overall"][f"ndcg@{CUT}"]]
        chosen = _best(ok)
    width = items.shape[1]
    insertion = None if spec.insertion is None else select_insertion(
        run, cases, beams, base, WarmPlan.of(cases, new, base.cold_mask, spec.bounds.plan_window, trend=True),
        spec.bounds, spec.insertion, progress)
    retrieved = {r: retrieve(run.prepared.embeddings, cases.histories, new, width, r) for r in spec.recent}
    baselines = {
        "retriever": [scored(retrieved[r], recent=r) for r in spec.recent],
        "reserved_slots": [scored(reserved_slots(items, retrieved[r], s, CUT), recent=r, s=s)
                           for r in spec.recent for s in spec.slots],
        "dense_rerank": [scored(dense_rerank(run.prepared.embeddings, cases.histories, items, new, r), recent=r)
                         for r in spec.recent],
    }
    return {"cases": "valid", "n_cases": len(cases), "decode_seconds": decode_s, "bounds": asdict(spec.bounds),
            "plan": {"novel_share_planned": plan.share, "novel_share_valid": float(plan.novel.mean())
                     if len(plan.novel) else 0.0},
            "base": base_row, "edited": edited_row, "cells": cells,
            "chosen": None if chosen is None else chosen["prior"],
            "chosen_metrics": None if chosen is None else chosen["metrics"],
            "chosen_strata": None if chosen is None else chosen.get("strata"),
            "insertion": insertion,
            "baselines": {name: {"cells": c, "chosen": {k: v for k, v in _best(c).items() if k != "metrics"}}
                          for name, c in baselines.items()}}


def select_insertion(run: LoadedRun, cases: CaseSet, beams: Beams, base: EvalResult, plan: WarmPlan,
                     bounds: Bounds, grid: InsertionGrid, progress: bool = True) -> dict:
    """Calibrated insertion on validation: per (recent, margin) the cross-fitted lists (``cross_fitted``) scored,
    the best overall NDCG@10 among those within ``bounds`` that beat the beams chosen — the warm drop held at the
    upper end (``bounds.upper``) at the share of histories ending with a new item where its trend is heading (the
    insertion spends its warm drop there) — and the models refitted on every validation case. ``chosen``: the
    fitted ``CalibratedInsertion.to_dict()`` (None: no cell within the bounds)."""
    if run.config.decode.k < CUT:
        raise ConfigError(f"calibrated insertion ranks {CUT} items: decode.k must be ≥ {CUT}")
    new, width = new_items(run), beams.items.shape[1]
    base_ndcg = base.summary()["overall"][f"ndcg@{CUT}"]
    cells, proposals = [], {}
    for recent in tqdm(grid.recent, desc="coldstart: calibrated insertion", disable=not progress):
        cfg = InsertionConfig(recent=recent, candidates=grid.candidates, width=width)
        proposals[recent] = propose(run.prepared.embeddings, run.prepared.codes, new, cases.histories, beams,
                                    recent, grid.candidates)
        try:
            lists = cross_fitted(proposals[recent], cases.targets, cases.timestamps, cfg, grid.bias, width)
        except ConfigError as err:  # e.g. no validation case's next item among one half's proposals
            return {"plan_share": plan.share, "cells": cells, "chosen": None, "chosen_metrics": None,
                    "unavailable": str(err)}
        for bias, topk in lists.items():
            result = score_topk(run, topk, cases)
            row = _row(result, topk, new, base)
            row["warm_drop_planned"] = plan.drop(result, base, below=bounds.max_warm_drop)
            cells.append({"insertion": asdict(replace(cfg, bias=float(bias))), "metrics": row})
    ok = [c for c in cells if _admissible(c["metrics"], bounds) and c["metrics"]["overall"][f"ndcg@{CUT}"] > base_ndcg]
    best = _best(ok)
    chosen = None
    if best is not None:
        cfg = InsertionConfig(**best["insertion"])
        chosen = CalibratedInsertion.fit(proposals[cfg.recent], cases.targets, cfg).to_dict()
    return {"plan_share": plan.share, "cells": cells, "chosen": chosen,
            "chosen_metrics": None if best is None else best["metrics"]}


def coldstart(run: LoadedRun, out_dir: Path, spec: ColdstartSpec | None = None,
              artifact: EditArtifact | None = None, name: str = "coldstart", echo=print) -> dict:
    """``select_coldstart`` on validation, then the test cases (all, or ``eval.max_cases``) scored for TIGER (the
    run's beams, with ``artifact``'s edits when given), the chosen prior on those beams, and every baseline at its
    validation setting; writes ``<out_dir>/<name>.json|md|png`` and ``<name>_selection.json``."""
    spec = spec or ColdstartSpec()
    if run.config.eval.cases != "test":
        raise ConfigError("coldstart selects on validation and reports on test: leave eval.cases=test")
    out_dir = Path(out_dir)
    selection = select_coldstart(run, spec, artifact)
    write_json(out_dir / f"{name}_selection.json", selection)
    from genrecedit.runs.evaluate import evaluation_cases

    cases = evaluation_cases(run)
    new = new_items(run)
    beams = decode(run, cases, None, "coldstart: test beams")
    items = beams.items.numpy()
    width = items.shape[1]
    lists: dict[str, np.ndarray] = {"TIGER": items}
    if artifact is not None:
        beams = decode(run, cases, artifact, "coldstart: test beams, edited")
        lists["TIGER + edit"] = beams.items.numpy()
    if selection["chosen"] is not None:
        prior_cfg = PriorConfig.of(selection["chosen"])
        lists[PRIOR] = make_prior(run, prior_cfg).apply(cases.histories, beams).items.numpy()
    insertion = (selection.get("insertion") or {}).get("chosen")
    if insertion is not None:
        write_json(out_dir / f"{name}_insertion.json", insertion)
        lists[INSERTION] = CalibratedInsertion.of(insertion).apply(
            run.prepared.embeddings, run.prepared.codes, new, cases.histories, beams).items.numpy()
    picks = selection["baselines"]
    for r in spec.recent:
        lists[f"retriever (recent {r})"] = retrieve(run.prepared.embeddings, cases.histories, new, width, r)
    slots = picks["reserved_slots"]["chosen"]
    lists[f"reserved slots (s {slots['s']}, recent {slots['recent']})"] = reserved_slots(
        items, retrieve(run.prepared.embeddings, cases.histories, new, width, slots["recent"]), slots["s"], CUT)
    dense = picks["dense_rerank"]["chosen"]
    lists[f"dense re-rank (recent {dense['recent']})"] = dense_rerank(run.prepared.embeddings, cases.histories,
                                                                      items, new, dense["recent"])
    results = {name_: score_topk(run, topk, cases) for name_, topk in lists.items()}
    base_name = next(iter(lists))
    base = results[base_name]
    rows = {}
    masks = strata_masks(cases.histories, new)
    for sys_name, res in results.items():
        row = _row(res, lists[sys_name], new, base)
        row["vs_base"] = _paired(res, base)
        row["strata"] = strata_rows(res, base, lists[sys_name], new, masks)
        rows[sys_name] = row
    best_baseline = max((n for n in rows if n != base_name and "(chosen)" not in n),
                        key=lambda n: rows[n]["overall"][f"ndcg@{CUT}"])
    report = {"dataset": run.config.dataset, "n_cases": len(cases), "n_new_items": int(len(new)),
              "novel_share": float(masks["novel"].mean()),
              "chosen_prior": selection["chosen"], "chosen_insertion": None if insertion is None else
              insertion["config"], "bounds": asdict(spec.bounds), "systems": rows,
              "best_baseline": best_baseline}
    if PRIOR in results:
        report["prior_vs_best_baseline"] = _paired(results[PRIOR], results[best_baseline])
    # the recipe to serve: of the two text-only recipes chosen within the bounds, the better on validation (the
    # insertion's cross-fitted lists, the prior's own selection cases)
    on_valid = {}
    if selection["chosen"] is not None:
        on_valid[PRIOR] = selection["chosen_metrics"]["overall"][f"ndcg@{CUT}"]
    if insertion is not None:
        on_valid[INSERTION] = selection["insertion"]["chosen_metrics"]["overall"][f"ndcg@{CUT}"]
    report["recipe"] = max(on_valid, key=on_valid.get) if on_valid else None
    report["recipe_valid_ndcg@10"] = on_valid
    if INSERTION in results:
        ins = results[INSERTION]
        report["insertion_vs_best_baseline"] = _paired(ins, results[best_baseline])
        if PRIOR in results:
            report["insertion_vs_prior"] = _paired(ins, results[PRIOR])
    write_json(out_dir / f"{name}.json", report)
    write_metrics(out_dir, f"{name}_metrics", {n: r.summary() for n, r in results.items()})
    echo(format_table({n: r.summary() for n, r in results.items()}))
    echo(format_coldstart(report))
    return report


def _paired(a: EvalResult, b: EvalResult) -> dict:
    """Paired bootstrap (mean difference, 95 % interval) of a − b: overall and warm NDCG@10, cold recall@10."""
    out = {}
    for subset, metric in (("overall", f"ndcg@{CUT}"), ("warm", f"ndcg@{CUT}"), ("cold", f"recall@{CUT}")):
        if a.subset_mask(subset).any():
            out[f"{subset}_{metric}"] = list(paired_bootstrap_diff(a.per_case(metric, subset),
                                                                   b.per_case(metric, subset)))
    return out


def adopt(run_dir: Path, report: dict, out_dir: Path, name: str = "coldstart") -> RunConfig:
    """Write ``coldstart``'s recipe into the run so that the service serves it: the prior into config.yaml, or the
    fitted insertion (``<out_dir>/<name>_insertion.json``) copied to ``<run_dir>/insertion.json`` with
    ``config.insertion`` naming it and the prior off. Atomic; nothing changes when there is no recipe."""
    path = Path(run_dir) / CONFIG_FILE
    cfg = load_config(path)
    if report.get("recipe") == INSERTION:
        fitted = CalibratedInsertion.load(Path(out_dir) / f"{name}_insertion.json")
        fitted.save(Path(run_dir) / INSERTION_FILE)
        cfg = replace(cfg, insertion=INSERTION_FILE, prior=replace(cfg.prior, enabled=False))
    elif report.get("recipe") == PRIOR:
        cfg = replace(cfg, insertion=None, prior=PriorConfig.of({**report["chosen_prior"], "enabled": True}))
    else:
        return cfg
    cfg.save(path)
    return cfg


def adopted_insertion(run: LoadedRun) -> CalibratedInsertion | None:
    """The calibrated insertion the run's config names (``config.insertion``, relative to the run directory;
    ``coldstart --adopt`` writes it), checked against the run's decoding: its lists must be as long as it was
    fitted on. None when the config names none."""
    if run.config.insertion is None:
        return None
    path = Path(run.run_dir) / run.config.insertion
    if not path.is_file():
        raise ConfigError(f"config.insertion names {path}, which does not exist; run `genrecedit coldstart --adopt` "
                          "or set insertion: null")
    fitted = CalibratedInsertion.load(path)
    if fitted.cfg.width is not None and fitted.cfg.width > run.config.decode.beam:
        raise ConfigError(f"{path} was fitted on lists of {fitted.cfg.width} items; decode.beam is "
                          f"{run.config.decode.beam}")
    return fitted


def format_coldstart(report: dict) -> str:
    lines = [f"{'system':<44} {'overall N@10':>12} {'warm drop':>9} {'cold R@10':>9} {'new slots':>9} "
             f"{'max item':>8} {'unreached':>9}"]
    for sys_name, r in report["systems"].items():
        e = r["exposure"]
        lines.append(f"{sys_name:<44} {r['overall'][f'ndcg@{CUT}']:>12.4f} {100 * r['warm_drop']:>8.1f}% "
                     f"{(r['cold'][f'recall@{CUT}'] or 0):>9.4f} {100 * e['new_item_slot_share']:>8.1f}% "
                     f"{100 * e['max_item_share']:>7.1f}% {e['unreached_items']:>9}")
    lines.append(f"chosen prior (validation): {report['chosen_prior']}; best baseline: {report['best_baseline']}")
    if report.get("chosen_insertion") is not None:
        lines.append(f"chosen calibrated insertion (validation): {report['chosen_insertion']}")
    lines.append(f"recipe (the better on validation): {report.get('recipe')}")
    return "\n".join(lines)
