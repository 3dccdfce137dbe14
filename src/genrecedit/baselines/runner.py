"""Fit a comparison baseline on a trained run and score it on the run's evaluation cases, the way TIGER is scored.

``run_baseline`` is the one entry point (CLI and experiment runner); from a shell:

    genrecedit baselines -r runs/demo-base -b sasrec -b bert4rec -o threads=1 -o eval.max_cases=2000 \
        -p max_minutes=6 --reference --out runs/baselines/demo-base
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from genrecedit.atomic import write_json
from genrecedit.baselines.registry import make
from genrecedit.data.dataset import CaseSet
from genrecedit.errors import ConfigError
from genrecedit.evaluation.report import Summary
from genrecedit.runs.backbone import LoadedRun
from genrecedit.runs.evaluate import evaluate_model, evaluation_cases, popularity_results, score_topk

METRICS_FILE = "metrics.json"


@dataclass
class BaselineRun:
    """A fitted baseline's metrics on the run's evaluation cases, with its cost."""

    name: str
    summary: Summary
    fit_seconds: float
    recommend_seconds: float
    reused: bool
    best_valid_ndcg10: float


def run_baseline(run: LoadedRun, name: str, params: dict | None = None, out_dir: Path | None = None,
                 cases: CaseSet | None = None, device: str | None = None) -> BaselineRun:
    """``make(name, params)`` → ``fit(run, out_dir)`` → ``recommend(cases, decode.k)`` → ``score_topk``.

    cases: default ``runs.evaluate.evaluation_cases(run)`` (``eval.cases`` / ``eval.max_cases``, seeded), so the
    numbers line up with TIGER's on the same cases. device: default the run's (cpu/cuda). Writes
    ``<out_dir>/metrics.json`` beside the fitted weights when ``out_dir`` is given.
    """
    params = dict(params or {})
    if name != "specgr":
        params.setdefault("device", device or run.config.device)
        params.setdefault("seed", run.config.seed)
    baseline = make(name, params)
    cases = evaluation_cases(run) if cases is None else cases
    t0 = time.perf_counter()
    fit = baseline.fit(run, out_dir)
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    topk = baseline.recommend(cases, run.config.decode.k)
    recommend_seconds = time.perf_counter() - t0
    result = BaselineRun(name, score_topk(run, topk, cases).summary(), fit.seconds if fit.reused else fit_seconds,
                         recommend_seconds, fit.reused, fit.best_valid_ndcg10)
    if out_dir is not None:
        write_json(Path(out_dir) / METRICS_FILE, {**asdict(result), "params": params,
                                                  "cases": run.config.eval.cases, "n_cases": len(cases)})
    return result


def reference_results(run: LoadedRun, cases: CaseSet | None = None) -> dict[str, Summary]:
    """TIGER (unedited beams), MostPop and RecentPop on the same cases, for a table beside the baselines."""
    cases = evaluation_cases(run) if cases is None else cases
    tiger, _ = evaluate_model(run, cases, desc="TIGER")
    return {"TIGER": tiger.summary(), **{k: v.summary() for k, v in popularity_results(run, cases).items()}}


def parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"baseline parameter {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        params[key.strip()] = yaml.safe_load(raw)
    return params
