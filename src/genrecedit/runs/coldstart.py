"""Text-only cold start on a trained run: choose the content prior (and every baseline's setting) on validation,
then score the chosen recipe and the baselines side by side on test, with paired intervals and exposure.

Selection (``select_coldstart``) decodes validation cases only and never touches the test split; ``coldstart``
reports on test what selection chose. The new items are every catalog item absent from training; only their text is
used (no interaction of a new item is read anywhere here).
"""
from __future__ import annotations

import functools
import itertools
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from genrecedit.atomic import write_json
from genrecedit.coldstart.baselines import dense_rerank, reserved_slots, retrieve
from genrecedit.coldstart.exposure import ExposureCap
from genrecedit.coldstart.insertion import CalibratedInsertion, InsertionConfig, cross_fitted, propose
from genrecedit.coldstart.prior import ContentPrior, PriorConfig
from genrecedit.data.dataset import CaseSet
from genrecedit.edit.artifact import EditArtifact
from genrecedit.errors import ConfigError
from genrecedit.evaluation.bootstrap import paired_bootstrap_diff
from genrecedit.evaluation.report import EvalResult, evaluate_topk, format_table, write_metrics
from genrecedit.model.beam import Beams
from genrecedit.config import RunConfig, load_config
from genrecedit.runs.backbone import CONFIG_FILE, LoadedRun
from genrecedit.runs.coldstart_bounds import (CUT, Bounds, WarmPlan, _admissible, _best, _row, allocate_strata,
                                              choose_strata, strata_masks, strata_rows)
from genrecedit.runs.evaluate import score_topk

PRIOR, INSERTION = "content prior (chosen)", "calibrated insertion (chosen)"  # the report's rows of the recipes
# with a re-ranking insertion: its warm model's order of the beam and no new item, to tell the two gains apart
RERANK_ONLY = "calibrated insertion, beam re-rank only (chosen)"
# the insertion the other objective chooses, fitted on the same validation cases (the trade-off, side by side)
OTHER_OBJECTIVE = "calibrated insertion, {objective} objective (chosen)"
# where the chosen insertion's warm model reads interaction counts: the best cell without them, to tell what they add
WITHOUT_COUNTS = "calibrated insertion, no interaction counts (chosen)"
# the chosen insertion's lists without its exposure cap, to tell what the cap changed
UNCAPPED = "calibrated insertion, no exposure cap (chosen)"
OBJECTIVES = ("cold", "overall")  # what selection maximises within the bounds (InsertionGrid.objective)
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
class InsertionGrid:
    """Calibrated insertion's settings tried on validation (the history's content, the margin, the beam's order)
    and what selection maximises among the cells within the bounds that beat the beams overall:

    - ``"cold"``: the new items' reach, cold Recall@10, among the cells whose overall NDCG@10 also beats every
      baseline held to the same bounds (``baseline_floor``); ties by overall NDCG@10. The warm NDCG a re-ranked beam
      gains is then spent on new items up to the warm bound, which is held against the unedited beams. No cell above
      that floor: the best overall;
    - ``"overall"``: overall NDCG@10.
    """

    recent: tuple[int, ...] = (1, 3)
    bias: tuple[float, ...] = tuple(0.25 * i for i in range(-8, 25))  # −2 … 6 log-odds
    candidates: int = 10
    rerank: tuple[bool, ...] = (False, True)  # the beam's order kept, or re-ordered by the warm model
    # a re-ranking warm model without and with the beam items' interaction counts (tried with rerank cells only)
    popularity: tuple[bool, ...] = (False, True)
    # the "lately" count: the training period's last share by time, a stretch as long later on (item_counts)
    recent_counts: float = 0.25
    objective: str = "cold"
    # the rules tried, each (window, spend_rerank): ``window`` the latest share of the validation period (by time)
    # the insertion is fitted and chosen on (1: all of it; the cases nearest the period it will serve, farthest
    # from the training data its backbone echoes); ``spend_rerank`` False: a re-ranking cell's warm drop is also
    # held against its own re-ranked beams (no proposal), so the insertion may not spend the warm NDCG its
    # re-ranking gains on validation (a gain fitted on one period)
    rules: tuple[tuple[float, bool], ...] = ((1.0, True), (0.5, True), (1.0, False), (0.5, False))
    # with several rules, the forward check: the validation period's last ``check`` share (by time) held out, each
    # rule selects on the rest; the first rule stays while its pick keeps the bounds there, else the objective's
    # best among the rules that keep them is the one applied to the whole period (``rule_check``)
    check: float = 0.25
    # the chosen insertion is served through an exposure cap at the bound it was selected with
    # (``Bounds.max_item_share``; ``InsertionConfig.cap``): the bound then holds on lists whose mix validation
    # did not show; False: no cap
    cap: bool = True

    def settings(self) -> list[tuple[int, bool, bool]]:
        """The (recent, rerank, popularity) settings tried, each with every margin."""
        return [(r, rr, p) for r, rr, p in itertools.product(self.recent, self.rerank, self.popularity)
                if rr or not p]

    def __post_init__(self) -> None:
        check_objective(self.objective)
        if not 0 < self.recent_counts <= 1:
            raise ConfigError(f"insertion recent_counts must be in (0, 1], got {self.recent_counts}")
        if not self.rules:
            raise ConfigError("insertion rules: give at least one (window, spend_rerank)")
        self.rules = tuple((float(w), bool(sp)) for w, sp in self.rules)
        for window, _ in self.rules:
            if not 0 < window <= 1:
                raise ConfigError(f"insertion window must be in (0, 1], got {window}")
        if not 0 < self.check < 1:
            raise ConfigError(f"insertion check must be in (0, 1), got {self.check}")

    def rule(self, window: float, spend_rerank: bool) -> "InsertionGrid":
        """This grid with one rule (no check)."""
        return replace(self, rules=((window, spend_rerank),))


VALID_USERS = ("test", "all")  # ColdstartSpec.valid_users


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ConfigError(f"insertion objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


@dataclass
class ColdstartSpec:
    grid: PriorGrid = field(default_factory=PriorGrid)
    insertion: InsertionGrid | None = field(default_factory=InsertionGrid)  # None: calibrated insertion not tried
    bounds: Bounds = field(default_factory=Bounds)
    valid_max_cases: int | None = None  # a seeded sample of validation cases for selection (None: all of them)
    # whose validation cases select: "test", the split's users (those with a test interaction, where the split
    # filters them); "all", also the users the filter left out (``selection_cases``)
    valid_users: str = "test"
    slots: tuple[int, ...] = tuple(range(1, CUT))  # reserved-slot hybrid: s tried on validation
    recent: tuple[int, ...] = (1, 3)  # the baselines' history content: last item, mean of the last 3

    def __post_init__(self) -> None:
        if self.valid_users not in VALID_USERS:
            raise ConfigError(f"valid_users must be one of {', '.join(VALID_USERS)}, got {self.valid_users!r}")


def new_items(run: LoadedRun) -> np.ndarray:
    """The items a text-only cold start recommends: every catalog item absent from training (read from the warm
    flags, never from a case set)."""
    return np.flatnonzero(~run.prepared.split.warm)


def item_counts(run: LoadedRun, recent: float = 0.25, asof: float | None = None) -> np.ndarray:
    """[n_items, 2] int64 each item's interactions: its occurrences in the training sequences
    (``train_counts``) and its occurrences as a target in the training period's last ``recent`` share (by time).
    ``asof`` (a timestamp): what is known by then — the validation cases' targets up to ``asof`` count too, and the
    "lately" window keeps its length and ends at ``asof``; a new item's validation interactions are never read (the
    text-only setting). Never reads the test split."""
    from genrecedit.evaluation.baselines import train_counts

    split = run.prepared.split
    times, targets = np.asarray(split.train.timestamps), np.asarray(split.train.targets)
    whole = train_counts(split)
    if not len(times):
        lately = np.zeros(split.n_items, np.int64)
    elif asof is None:
        lately = np.bincount(targets[times >= np.quantile(times, 1 - recent)], minlength=split.n_items)
    else:
        end = max(float(times.max()), float(asof))
        start = np.quantile(times, 1 - recent) + (end - float(times.max()))  # the same length, ending at ``end``
        v_times, v_targets = np.asarray(split.valid.timestamps), np.asarray(split.valid.targets)
        known = (v_times <= asof) & np.asarray(split.warm)[v_targets]  # a new item's interactions stay unread
        whole = whole + np.bincount(v_targets[known], minlength=split.n_items)
        lately = (np.bincount(targets[times >= start], minlength=split.n_items)
                  + np.bincount(v_targets[known & (v_times >= start)], minlength=split.n_items))
    return np.stack([whole, lately], 1).astype(np.int64)


def selection_cases(run: LoadedRun, limit: int | None, whole: bool, users: str = "test") -> CaseSet:
    """Validation cases (a seeded sample of ``limit``). ``whole``: the whole validation period — right for the prior
    alone, whose knowledge is text only; else, with observed knowledge configured (an edit that learnt from the
    period's first half), its second half only. ``users="all"``: also the validation cases of the users the split's
    ``filter_test_users`` left out (``data.protocols.unseen_user_valid``: never trained on, no test interaction),
    after the split's own — where few users reach the test period (the demo: 166 of 943) they hold most of the
    period's evidence."""
    from genrecedit.data.protocols import unseen_user_valid
    from genrecedit.runs.evaluate import evaluation_cases

    if users not in VALID_USERS:
        raise ConfigError(f"valid_users must be one of {', '.join(VALID_USERS)}, got {users!r}")
    if whole:  # the prior reads no interaction of a new item: no half of the period is knowledge
        run = run.with_settings("knowledge", source="pseudo")
    extra = None if users == "test" else unseen_user_valid(run.prepared.dataset, run.prepared.split,
                                                            run.config.split)
    return evaluation_cases(run.with_settings("eval", cases="valid", max_cases=limit), extra)


def decode(run: LoadedRun, cases: CaseSet, artifact: EditArtifact | None, desc: str) -> Beams:
    schedule = artifact.schedule(run.config.eval.trigger, run.recommender.device) if artifact is not None else None
    return run.recommender.recommend(cases.histories, run.config.decode, schedule, progress=desc, record_levels=True)


def score_valid(run: LoadedRun, topk: np.ndarray, cases: CaseSet) -> EvalResult:
    """A selection list scored for what a cell's row reads (``_row``, ``strata_rows``): @10 only, no prefix-NDCG
    (a grid scores hundreds of lists; the report's lists are scored in full by ``score_topk``)."""
    split = run.prepared.split
    return evaluate_topk(topk, cases.targets, split.is_cold(cases), split.warm, None, (CUT,))


def make_prior(run: LoadedRun, cfg: PriorConfig) -> ContentPrior:
    return ContentPrior(cfg, run.prepared.embeddings, run.prepared.codes, new_items(run), run.recommender.trie)


def select_coldstart(run: LoadedRun, spec: ColdstartSpec, artifact: EditArtifact | None = None,
                     progress: bool = True, cases: CaseSet | None = None) -> dict:
    """Choose on validation: the content prior (best overall NDCG@10 among the grid's cells within ``spec.bounds``
    that beat the unedited beams), the reserved-slot hybrid's s and recent, the dense re-rank's and the retriever's
    recent (each by overall NDCG@10: the strongest version of each baseline), and the calibrated insertion by
    ``spec.insertion.objective`` under the rule its forward check keeps (``insertion_selection``; ``baseline_floor``
    the overall NDCG@10 the ``"cold"`` objective must beat). Decodes validation only (``cases``:
    a subset of it chosen by the caller, e.g. an early window to check a rule on the later one)."""
    if cases is None:
        cases = selection_cases(run, spec.valid_max_cases, whole=artifact is None, users=spec.valid_users)
    new = new_items(run)
    t0 = time.perf_counter()
    beams = decode(run, cases, None, "coldstart: validation beams" if progress else False)
    decode_s = time.perf_counter() - t0
    items = beams.items.numpy()  # the unedited beams: the base every warm drop is measured against
    base = score_valid(run, items, cases)
    base_row = _row(base, items, new, base)
    plan = WarmPlan.of(cases, new, base.cold_mask, spec.bounds.plan_window, spec.bounds.plan_trend)
    masks = strata_masks(cases.histories, new)
    edited_row = None
    if artifact is not None:  # the prior then mixes into the edited beams
        beams = decode(run, cases, artifact, "coldstart: validation beams, edited" if progress else False)
        edited_row = _row(score_valid(run, beams.items.numpy(), cases), beams.items.numpy(), new, base)

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
                result = score_valid(run, topk, cases)
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
            result = score_valid(run, topk, cases)
            row = _row(result, topk, new, base)
            row["warm_drop_planned"] = plan.drop(result, base)
            chosen = {"prior": prior, "metrics": row,
                      "strata": strata_rows(result, base, topk, new, masks)}
    else:
        ok = [c for c in cells if _admissible(c["metrics"], spec.bounds)
              and c["metrics"]["overall"][f"ndcg@{CUT}"] > base_row["overall"][f"ndcg@{CUT}"]]
        chosen = _best(ok)
    baselines = baseline_cells(run, cases, items, base, spec)
    floor = baseline_floor(baselines, spec.bounds)
    insertion = None if spec.insertion is None else \
        insertion_selection(run, cases, beams, spec, progress, base, floor, items)
    return {"cases": "valid", "valid_users": spec.valid_users, "n_cases": len(cases), "decode_seconds": decode_s,
            "bounds": asdict(spec.bounds),
            "plan": {"novel_share_planned": plan.share, "novel_share_valid": float(plan.novel.mean())
                     if len(plan.novel) else 0.0},
            "base": base_row, "edited": edited_row, "cells": cells,
            "chosen": None if chosen is None else chosen["prior"],
            "chosen_metrics": None if chosen is None else chosen["metrics"],
            "chosen_strata": None if chosen is None else chosen.get("strata"),
            "insertion": insertion, "baseline_floor": floor,
            "baselines": {name: {"cells": c, "chosen": {k: v for k, v in _best(c).items() if k != "metrics"}}
                          for name, c in baselines.items()}}


def insertion_selection(run: LoadedRun, cases: CaseSet, beams: Beams, spec: ColdstartSpec, progress: bool = True,
                        base: EvalResult | None = None, floor: float | None = None,
                        items: np.ndarray | None = None) -> dict:
    """The calibrated insertion chosen on validation ``cases`` and their ``beams`` (``items``: the unedited beams'
    items, default ``beams``'): with one rule in ``spec.insertion.rules``, that rule (``select_on_window``); with
    several, first the forward check (``rule_check``) and then the rule it chooses, on every case. ``base``,
    ``floor``: the unedited beams' scores and the baselines' floor on all ``cases``, when the caller holds them."""
    grid = spec.insertion
    items = beams.items.numpy() if items is None else items
    check = None
    rule = grid.rules[0]
    if len(grid.rules) > 1:
        check = rule_check(run, cases, beams, items, spec, progress)
        rule = tuple(check["chosen"])
    out = select_on_window(run, cases, beams, replace(spec, insertion=grid.rule(*rule)), progress, base, floor, items)
    return {**out, "rule_check": check}


def select_on_window(run: LoadedRun, cases: CaseSet, beams: Beams, spec: ColdstartSpec, progress: bool = True,
                     base: EvalResult | None = None, floor: float | None = None,
                     items: np.ndarray | None = None, spends: tuple[bool, ...] | None = None) -> dict:
    """``select_insertion`` with ``spec.insertion``'s first rule: on the latest ``window`` of ``cases``, with that
    window's own base, planned mix (the trend's) and baseline floor, re-ranking gains spent or not. ``spends``:
    the window's selection for each of these spend_rerank values from one pass over the grid, {spend: selection}."""
    grid = spec.insertion
    window, spend = grid.rules[0]
    items = beams.items.numpy() if items is None else items
    if window < 1:
        keep = latest(cases.timestamps, window)
        cases, beams = cases.subset(keep), beams.rows(keep)
        items, base, floor = items[keep], None, None
    base = score_valid(run, items, cases) if base is None else base
    if floor is None:
        floor = baseline_floor(baseline_cells(run, cases, items, base, spec), spec.bounds)
    plan = WarmPlan.of(cases, new_items(run), base.cold_mask, spec.bounds.plan_window, trend=True)
    outs = select_insertion(run, cases, beams, base, plan, spec.bounds, grid, progress, floor,
                            (spend,) if spends is None else spends)
    outs = {s: {**out, "n_cases": len(cases), "window": window, "spend_rerank": s} for s, out in outs.items()}
    return outs[spend] if spends is None else outs


def rule_check(run: LoadedRun, cases: CaseSet, beams: Beams, items: np.ndarray, spec: ColdstartSpec,
               progress: bool = True) -> dict:
    """The forward check of ``spec.insertion.rules``: the validation period's last ``check`` share (by time) held
    out, each rule selects on the earlier cases (``select_on_window``) and its pick, fitted there, is scored on the
    held-out ones as it would be served (through its exposure cap, in time order; no pick: the unedited beams).
    Chosen (``chosen``: the rule's (window, spend_rerank); ``choose_rule``, floor: the baselines' best within the
    bounds on the held-out cases): the first rule while it keeps the bounds there, else the objective's among those
    that do (``kept`` False: none does)."""
    grid = spec.insertion
    held = latest(cases.timestamps, grid.check)
    if held.all() or not held.any():
        raise ConfigError("the insertion's forward check needs validation cases on both sides of its cut")
    new = new_items(run)
    fit_cases, held_cases = cases.subset(~held), cases.subset(held)
    held_beams, held_items = beams.rows(held), items[held]
    held_base = score_valid(run, held_items, held_cases)
    fit_beams, fit_items = beams.rows(~held), items[~held]
    fit_base = score_valid(run, fit_items, fit_cases)  # once for every rule that fits on all of them
    fit_floor = baseline_floor(baseline_cells(run, fit_cases, fit_items, fit_base, spec), spec.bounds)
    held_floor = baseline_floor(baseline_cells(run, held_cases, held_items, held_base, spec), spec.bounds)
    windows: dict[float, tuple[bool, ...]] = {}  # the rules sharing a window share one pass over the grid
    for window, spend in grid.rules:
        windows[window] = windows.get(window, ()) + (spend,)
    picks = {}
    for window, spends in tqdm(windows.items(), desc="coldstart: insertion rules", disable=not progress):
        outs = select_on_window(run, fit_cases, fit_beams, replace(spec, insertion=grid.rule(window, spends[0])),
                                False, fit_base, fit_floor, fit_items, spends=spends)
        picks.update({(window, s): out for s, out in outs.items()})
    proposed, rows = {}, []
    for window, spend in grid.rules:
        sel = picks[(window, spend)]
        topk = held_items
        if sel["chosen"] is not None:
            fitted = CalibratedInsertion.of(sel["chosen"])
            key = (fitted.cfg.recent, fitted.cfg.candidates)
            if key not in proposed:
                proposed[key] = propose(run.prepared.embeddings, run.prepared.codes, new, held_cases.histories,
                                        held_beams, *key)
            # served as the recipe would be: through its exposure cap, the held-out cases in time order
            topk = fitted.rank(proposed[key], held_items.shape[1], cap=fitted.cfg.exposure_cap(), new_items=new,
                               order=np.argsort(held_cases.timestamps, kind="stable"))[0]
        row = _row(score_valid(run, topk, held_cases), topk, new, held_base)
        rows.append({"rule": [window, spend], "pick": None if sel["chosen"] is None else sel["chosen"]["config"],
                     "held_out": row})
    best, kept = choose_rule(rows, spec.bounds, grid.objective, held_floor)
    return {"check": grid.check, "n_fit": int((~held).sum()), "n_held": int(held.sum()), "floor": held_floor,
            "rules": rows, "chosen": best["rule"], "kept": kept}


def choose_rule(rows: list[dict], bounds: Bounds, objective: str, floor: float) -> tuple[dict, bool]:
    """The forward check's choice among its ``rows`` (each with its ``held_out`` row), and whether it keeps
    ``bounds`` there (warm NDCG@10 drop and max item share, point estimates). The first rule is the default and
    stays while it keeps them: the check guards against a rule that breaks the bound one window ahead, and a short
    window's ranking of rules that all keep it is mostly noise. Otherwise the objective's (``prefer``, ``floor``)
    among the rules that keep them; none does: the smallest held-out warm drop."""
    def keeps(r: dict) -> bool:
        return (r["held_out"]["warm_drop"] <= bounds.max_warm_drop
                and r["held_out"]["exposure"]["max_item_share"] <= bounds.max_item_share)

    if keeps(rows[0]):
        return rows[0], True
    kept = [r for r in rows if keeps(r)]
    if kept:
        return prefer(kept, lambda r: r["held_out"], objective, floor), True
    return min(rows, key=lambda r: r["held_out"]["warm_drop"]), False


def latest(times: np.ndarray, share: float) -> np.ndarray:
    """[n] bool: the cases in the latest ``share`` of the period by time (its last ``share`` quantile on)."""
    if share >= 1 or len(times) == 0:
        return np.ones(len(times), bool)
    return np.asarray(times) >= np.quantile(times, 1 - share)


def baseline_cells(run: LoadedRun, cases: CaseSet, items: np.ndarray, base: EvalResult,
                   spec: ColdstartSpec) -> dict[str, list[dict]]:
    """Every baseline's settings scored on ``cases`` (``items``: their unedited beams, ``base`` scored): the
    retriever and the dense re-rank per ``spec.recent``, the reserved-slot hybrid per recent and s."""
    new, width = new_items(run), items.shape[1]

    def scored(topk: np.ndarray, **what) -> dict:
        return {**what, "metrics": _row(score_valid(run, topk, cases), topk, new, base)}

    retrieved = {r: retrieve(run.prepared.embeddings, cases.histories, new, width, r) for r in spec.recent}
    return {
        "retriever": [scored(retrieved[r], recent=r) for r in spec.recent],
        "reserved_slots": [scored(reserved_slots(items, retrieved[r], s, CUT), recent=r, s=s)
                           for r in spec.recent for s in spec.slots],
        "dense_rerank": [scored(dense_rerank(run.prepared.embeddings, cases.histories, items, new, r), recent=r)
                         for r in spec.recent],
    }


def baseline_floor(baselines: dict[str, list[dict]], bounds: Bounds) -> float:
    """The best overall NDCG@10 of the baselines' cells that keep ``bounds`` (warm drop, estimate, and max item
    share): what the ``"cold"`` objective's insertion must beat at an equal or smaller warm drop (−inf: none)."""
    return max((c["metrics"]["overall"][f"ndcg@{CUT}"] for cells in baselines.values() for c in cells
                if (c["metrics"].get("warm_drop") or 0.0) <= bounds.max_warm_drop
                and c["metrics"]["exposure"]["max_item_share"] <= bounds.max_item_share), default=-float("inf"))


def pick_insertion(cells: list[dict], base_ndcg: float, bounds: Bounds, objective: str,
                   floor: float = -float("inf")) -> dict | None:
    """The cell ``objective`` chooses (``InsertionGrid``, ``prefer``) among ``cells`` within ``bounds`` whose
    overall NDCG@10 beats the beams' ``base_ndcg``; None: no such cell."""
    ok = [c for c in cells if _admissible(c["metrics"], bounds) and c["metrics"]["overall"][f"ndcg@{CUT}"] > base_ndcg]
    return prefer(ok, lambda c: c["metrics"], objective, floor)


def prefer(options: list, metrics, objective: str, floor: float):
    """The option ``objective`` prefers by its validation row ``metrics(option)``: ``"overall"``, the best overall
    NDCG@10; ``"cold"``, the most cold recall@10 among those whose overall NDCG@10 beats ``floor`` (ties by
    overall), else the best overall. None: no option."""
    check_objective(objective)

    def overall(o) -> float:
        return metrics(o)["overall"][f"ndcg@{CUT}"]

    above = [o for o in options if overall(o) > floor]
    if objective == "overall" or not above:
        return max(options, key=overall, default=None)
    return max(above, key=lambda o: (metrics(o)["cold"][f"recall@{CUT}"] or 0.0, overall(o)))


def select_insertion(run: LoadedRun, cases: CaseSet, beams: Beams, base: EvalResult, plan: WarmPlan,
                     bounds: Bounds, grid: InsertionGrid, progress: bool = True,
                     floor: float = -float("inf"), spend_rerank: bool | tuple[bool, ...] = True) -> dict:
    """Calibrated insertion on validation: per (recent, rerank, popularity, margin) the cross-fitted lists
    (``cross_fitted``; ``popularity``: the warm model reads the counts of ``item_counts``, training's for every
    validation case, and a fitted model keeps those known by its last case, the counts it is served with)
    scored, the cell ``grid.objective`` picks (``pick_insertion``: among those within ``bounds`` that beat the
    beams — the warm drop held at the upper end (``bounds.upper``) at the share of histories ending with a new item
    where its trend is heading (the insertion spends its warm drop there) — the most cold recall above ``floor``,
    the baselines' best overall NDCG@10 within the bounds, or the best overall NDCG@10) and the models refitted on
    every validation case. ``chosen``: the fitted ``CalibratedInsertion.to_dict()`` (None: no cell within the
    bounds); ``other``: the other objective's, where it picks another cell; ``without_counts``: where the chosen
    cell's warm model reads interaction counts, the objective's pick among the cells that read none.
    ``spend_rerank`` False: a re-ranking cell must also keep the warm bound against its own re-ranked beams
    (``warm_drop_planned_rerank``; ``_admissible``). A tuple of values: {value: selection}, from one pass over the
    grid (each value's selection as it would be alone)."""
    spends = spend_rerank if isinstance(spend_rerank, tuple) else (spend_rerank,)
    if run.config.decode.k < CUT:
        raise ConfigError(f"calibrated insertion ranks {CUT} items: decode.k must be ≥ {CUT}")
    new, width = new_items(run), beams.items.shape[1]
    base_ndcg = base.summary()["overall"][f"ndcg@{CUT}"]
    cells, proposals = [], {}
    settings = grid.settings()
    counts = item_counts(run, grid.recent_counts) if any(p for *_, p in settings) else None
    # the exposure cap the chosen cell is served through: the bound it is selected with, where that bounds anything
    capped = bounds.max_item_share if grid.cap and 0 < bounds.max_item_share < 1 else None
    for recent, rerank, popularity in tqdm(settings, desc="coldstart: calibrated insertion", disable=not progress):
        cfg = InsertionConfig(recent=recent, candidates=grid.candidates, width=width, rerank=rerank,
                              popularity=popularity, cap=capped)
        if recent not in proposals:
            proposals[recent] = propose(run.prepared.embeddings, run.prepared.codes, new, cases.histories, beams,
                                        recent, grid.candidates)
        held = rerank and not all(spends)  # the bound also against the cell's own re-ranked beams
        try:
            lists = cross_fitted(proposals[recent], cases.targets, cases.timestamps, cfg,
                                 grid.bias + ((float("inf"),) if held else ()), width, counts)
        except ConfigError as err:  # e.g. no validation case's next item among one half's proposals
            out = {"plan_share": plan.share, "objective": grid.objective, "floor": floor, "cells": cells,
                   "chosen": None, "chosen_metrics": None, "other": None, "without_counts": None,
                   "unavailable": str(err)}
            return {s: out for s in spends} if isinstance(spend_rerank, tuple) else out
        reranked = score_valid(run, lists.pop(float("inf")), cases) if held else None
        for bias, topk in lists.items():
            result = score_valid(run, topk, cases)
            row = _row(result, topk, new, base)
            row["warm_drop_planned"] = plan.drop(result, base, below=bounds.max_warm_drop)
            if reranked is not None:
                row["warm_drop_planned_rerank"] = plan.drop(result, reranked, below=bounds.max_warm_drop)
            cells.append({"insertion": asdict(replace(cfg, bias=float(bias))), "metrics": row})

    refits: dict[tuple, dict] = {}  # per picked cell: its models refitted on every validation case, once
    asof = None if counts is None else float(np.max(cases.timestamps))  # when the served counts are known

    @functools.cache
    def served_counts() -> np.ndarray:
        return item_counts(run, grid.recent_counts, asof)

    def fitted(cell: dict | None) -> dict | None:
        if cell is None:
            return None
        key = tuple(sorted(cell["insertion"].items()))
        if key not in refits:
            cfg = InsertionConfig(**cell["insertion"])
            model = CalibratedInsertion.fit(proposals[cfg.recent], cases.targets, cfg, counts)
            if model.counts is not None:  # served after its cases: with the counts known by the last of them
                model = replace(model, counts=served_counts())
            refits[key] = model.to_dict()
        return refits[key]

    def chosen(spend: bool) -> dict:
        view = cells  # a spending rule does not hold the drop against the re-ranked beams: as if never computed
        if spend and not all(spends):
            view = [{**c, "metrics": {k: v for k, v in c["metrics"].items() if k != "warm_drop_planned_rerank"}}
                    for c in cells]
        best = pick_insertion(view, base_ndcg, bounds, grid.objective, floor)
        other_objective = next(o for o in OBJECTIVES if o != grid.objective)
        other = pick_insertion(view, base_ndcg, bounds, other_objective, floor)
        plain = None  # the objective's pick among the cells whose warm model reads no count
        if best is not None and best["insertion"]["popularity"]:
            plain = pick_insertion([c for c in view if not c["insertion"]["popularity"]], base_ndcg, bounds,
                                   grid.objective, floor)
        return {"plan_share": plan.share, "objective": grid.objective, "floor": floor, "cells": view,
                "counts_asof": asof,
                "chosen": fitted(best), "chosen_metrics": None if best is None else best["metrics"],
                "other": None if other is None or other is best else {
                    "objective": other_objective, "chosen": fitted(other), "chosen_metrics": other["metrics"]},
                "without_counts": None if plain is None else {"chosen": fitted(plain),
                                                              "chosen_metrics": plain["metrics"]}}

    if isinstance(spend_rerank, tuple):
        return {s: chosen(s) for s in spends}
    return chosen(spend_rerank)


def coldstart(run: LoadedRun, out_dir: Path, spec: ColdstartSpec | None = None,
              artifact: EditArtifact | None = None, name: str = "coldstart", echo=print,
              test_beams: Beams | None = None) -> dict:
    """``select_coldstart`` on validation, then the test cases (all, or ``eval.max_cases``) scored for TIGER (the
    run's beams, with ``artifact``'s edits when given), the chosen prior on those beams, and every baseline at its
    validation setting; writes ``<out_dir>/<name>.json|md|png`` and ``<name>_selection.json``. ``test_beams``: the
    unedited beams of those test cases (``decode``), when the caller decoded them already."""
    spec = spec or ColdstartSpec()
    if run.config.eval.cases != "test":
        raise ConfigError("coldstart selects on validation and reports on test: leave eval.cases=test")
    out_dir = Path(out_dir)
    selection = select_coldstart(run, spec, artifact)
    write_json(out_dir / f"{name}_selection.json", selection)
    from genrecedit.runs.evaluate import evaluation_cases

    cases = evaluation_cases(run)
    new = new_items(run)
    if test_beams is not None and len(test_beams.items) != len(cases):
        raise ConfigError(f"coldstart: {len(test_beams.items)} test beams given for {len(cases)} test cases")
    beams = decode(run, cases, None, "coldstart: test beams") if test_beams is None else test_beams
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
        fitted = CalibratedInsertion.of(insertion)
        proposed = {}  # per (recent, candidates): once for every row that reads them

        def proposals(cfg: InsertionConfig):
            key = (cfg.recent, cfg.candidates)
            if key not in proposed:
                proposed[key] = propose(run.prepared.embeddings, run.prepared.codes, new, cases.histories, beams,
                                        cfg.recent, cfg.candidates)
            return proposed[key]

        served = np.argsort(cases.timestamps, kind="stable")  # the order a service would serve them in

        def ranked(model: CalibratedInsertion, cap: ExposureCap | None) -> np.ndarray:
            """``model``'s lists as served: through ``cap`` (fresh), in time order."""
            return model.rank(proposals(model.cfg), width, cap=cap, new_items=new, order=served)[0]

        cap = fitted.cfg.exposure_cap()
        lists[INSERTION] = ranked(fitted, cap)
        if fitted.cfg.rerank:  # an infinite margin: no proposal enters
            lists[RERANK_ONLY] = fitted.rank(proposals(fitted.cfg), width, float("inf"))[0]
        if fitted.cfg.cap is not None:  # the same lists without the cap: what the cap changed
            lists[UNCAPPED] = fitted.rank(proposals(fitted.cfg), width)[0]
        other, plain = selection["insertion"].get("other"), selection["insertion"].get("without_counts")
        extra = {}  # the other objective's cell and the best without interaction counts, where they exist
        if other is not None:
            extra[OTHER_OBJECTIVE.format(objective=other["objective"])] = other
        if plain is not None:
            extra[WITHOUT_COUNTS] = plain
        for row_name, picked in extra.items():
            alt = CalibratedInsertion.of(picked["chosen"])
            lists[row_name] = ranked(alt, alt.cfg.exposure_cap())
    picks = selection["baselines"]
    retrieved = {r: retrieve(run.prepared.embeddings, cases.histories, new, width, r) for r in spec.recent}
    for r, topk in retrieved.items():
        lists[f"retriever (recent {r})"] = topk
    slots = picks["reserved_slots"]["chosen"]  # its recent is one of spec.recent (baseline_cells)
    lists[f"reserved slots (s {slots['s']}, recent {slots['recent']})"] = reserved_slots(
        items, retrieved[slots["recent"]], slots["s"], CUT)
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
              insertion["config"], "insertion_rule": insertion_rule(selection.get("insertion")),
              "bounds": asdict(spec.bounds), "systems": rows, "best_baseline": best_baseline}
    if insertion is not None and insertion["config"]["popularity"]:  # when the counts it serves were known
        report["insertion_counts_asof"] = selection["insertion"].get("counts_asof")
    if PRIOR in results:
        report["prior_vs_best_baseline"] = _paired(results[PRIOR], results[best_baseline])
    # the recipe to serve: of the two text-only recipes chosen within the bounds, the better on validation (the
    # insertion's cross-fitted lists on its rule's window, the prior's own selection cases) by the insertion's
    # objective
    on_valid = {}
    if selection["chosen"] is not None:
        on_valid[PRIOR] = selection["chosen_metrics"]
    if insertion is not None:
        on_valid[INSERTION] = selection["insertion"]["chosen_metrics"]
    objective = spec.insertion.objective if spec.insertion is not None else "overall"
    report["recipe"] = pick_recipe(on_valid, objective, selection.get("baseline_floor", -float("inf")))
    report["objective"] = objective
    report["recipe_valid_ndcg@10"] = {k: m["overall"][f"ndcg@{CUT}"] for k, m in on_valid.items()}
    report["recipe_valid_cold_recall@10"] = {k: m["cold"][f"recall@{CUT}"] for k, m in on_valid.items()}
    if INSERTION in results:
        ins = results[INSERTION]
        report["insertion_vs_best_baseline"] = _paired(ins, results[best_baseline])
        if WITHOUT_COUNTS in results:
            report["insertion_vs_without_counts"] = _paired(ins, results[WITHOUT_COUNTS])
        if UNCAPPED in results:
            report["insertion_vs_uncapped"] = _paired(ins, results[UNCAPPED])
            report["exposure_cap"] = cap.state()
        if PRIOR in results:
            report["insertion_vs_prior"] = _paired(ins, results[PRIOR])
    write_json(out_dir / f"{name}.json", report)
    write_metrics(out_dir, f"{name}_metrics", {n: r.summary() for n, r in results.items()})
    echo(format_table({n: r.summary() for n, r in results.items()}))
    echo(format_coldstart(report))
    return report


def insertion_rule(selection: dict | None) -> dict | None:
    """The rule the insertion was chosen with (window, spend_rerank) and, where the forward check chose it, each
    rule's held-out row: its pick, warm NDCG@10 drop, cold recall@10, overall NDCG@10, max item share."""
    if not selection or "window" not in selection:
        return None
    check = selection.get("rule_check")
    out = {"window": selection["window"], "spend_rerank": selection["spend_rerank"], "check": None}
    if check is not None:
        out["check"] = {"held_out_share": check["check"], "n_held": check["n_held"], "kept": check["kept"],
                        "rules": [{"rule": r["rule"], "pick": r["pick"],
                                   "warm_drop": r["held_out"]["warm_drop"],
                                   "cold_recall@10": r["held_out"]["cold"][f"recall@{CUT}"],
                                   "overall_ndcg@10": r["held_out"]["overall"][f"ndcg@{CUT}"],
                                   "max_item_share": r["held_out"]["exposure"]["max_item_share"]}
                                  for r in check["rules"]]}
    return out


def pick_recipe(on_valid: dict[str, dict], objective: str, floor: float) -> str | None:
    """Of the recipes' validation rows (name -> metrics row), the one ``objective`` prefers (``prefer``; ``floor``:
    the baselines' best overall NDCG@10 within the bounds)."""
    return prefer(list(on_valid), on_valid.get, objective, floor)


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
    lines = [f"{'system':<52} {'overall N@10':>12} {'warm drop':>9} {'cold R@10':>9} {'new slots':>9} "
             f"{'max item':>8} {'unreached':>9}"]
    for sys_name, r in report["systems"].items():
        e = r["exposure"]
        lines.append(f"{sys_name:<52} {r['overall'][f'ndcg@{CUT}']:>12.4f} {100 * r['warm_drop']:>8.1f}% "
                     f"{(r['cold'][f'recall@{CUT}'] or 0):>9.4f} {100 * e['new_item_slot_share']:>8.1f}% "
                     f"{100 * e['max_item_share']:>7.1f}% {e['unreached_items']:>9}")
    lines.append(f"chosen prior (validation): {report['chosen_prior']}; best baseline: {report['best_baseline']}")
    if report.get("chosen_insertion") is not None:
        lines.append(f"chosen calibrated insertion (validation): {report['chosen_insertion']}")
    if report.get("insertion_counts_asof") is not None:
        asof = datetime.fromtimestamp(report["insertion_counts_asof"], timezone.utc)
        lines.append(f"the insertion's item counts: as known at {asof:%Y-%m-%d %H:%M} UTC (validation's last case)")
    rule = report.get("insertion_rule")
    if rule is not None:
        how = "given" if rule["check"] is None else \
            f"forward check on validation's last {rule['check']['held_out_share']:g}" + \
            ("" if rule["check"]["kept"] else ", where no rule kept the bounds: the smallest warm drop")
        lines.append(f"insertion rule ({how}): window {rule['window']:g}, "
                     f"{'spends' if rule['spend_rerank'] else 'does not spend'} the re-ranking's gain")
    cap = report.get("exposure_cap")
    if cap is not None:
        lines.append(f"exposure cap: {100 * cap['share']:g}% of the lists served (test cases in time order); "
                     f"{cap['blocked']} new-item entries blocked")
    lines.append(f"recipe (the better on validation, objective {report.get('objective', 'overall')}): "
                 f"{report.get('recipe')}")
    return "\n".join(lines)
