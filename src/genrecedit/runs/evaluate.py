"""Score a run's recommender (base or edited) and the popularity baselines on the test cases."""
from __future__ import annotations

import time

import numpy as np

from genrecedit.data.dataset import CaseSet
from genrecedit.errors import ConfigError
from genrecedit.evaluation.baselines import most_popular, recent_popular
from genrecedit.evaluation.report import EvalResult, evaluate_topk
from genrecedit.model.beam import EditSchedule
from genrecedit.runs.backbone import LoadedRun
from genrecedit.runs.selection import uses_observed, validation_midpoint


def evaluation_cases(run: LoadedRun, extra: CaseSet | None = None) -> CaseSet:
    """The cases of ``eval.cases`` (test by default; valid for selecting λ and n — its second half when the edit
    learns from observed validation interactions), or a seeded sample of ``eval.max_cases`` of them. ``extra``:
    more validation cases after the split's own, halved and sampled with them (valid only)."""
    split = run.prepared.split
    cases = split.valid if run.config.eval.cases == "valid" else split.test
    if extra is not None:
        if run.config.eval.cases != "valid":
            raise ConfigError("extra cases join validation only: set eval.cases=valid")
        cases = cases.concat(extra)
    if run.config.eval.cases == "valid" and uses_observed(run):
        # the first half of the validation period is the observed knowledge: select on the second half only
        cases = cases.subset(np.flatnonzero(cases.timestamps >= validation_midpoint(split)))
    limit = run.config.eval.max_cases
    if limit is not None and limit < len(cases):
        idx = np.random.default_rng(run.config.eval.seed).choice(len(cases), limit, replace=False)
        cases = cases.subset(np.sort(idx))
    return cases


def score_topk(run: LoadedRun, topk: np.ndarray, cases: CaseSet) -> EvalResult:
    split = run.prepared.split
    ks = tuple(k for k in (10, 20, 50) if k <= topk.shape[1])
    return evaluate_topk(topk, cases.targets, split.is_cold(cases), split.warm, run.prepared.codes, ks)


def evaluate_model(run: LoadedRun, cases: CaseSet, edits: EditSchedule | None = None,
                   desc: str = "evaluate") -> tuple[EvalResult, float]:
    """Constrained (or, per config, unconstrained) beam search on ``cases`` -> metrics and wall seconds."""
    t0 = time.perf_counter()
    beams = run.recommender.recommend(cases.histories, run.config.decode, edits, progress=desc)
    return score_topk(run, beams.items.numpy(), cases), time.perf_counter() - t0


def popularity_results(run: LoadedRun, cases: CaseSet) -> dict[str, EvalResult]:
    k = run.config.decode.k
    split = run.prepared.split
    return {"MostPop": score_topk(run, most_popular(split, k, cases), cases),
            "RecentPop": score_topk(run, recent_popular(split, k, cases), cases)}
