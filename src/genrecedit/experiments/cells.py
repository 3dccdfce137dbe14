"""The experiment's units of work, each cached as ``<out>/cells/<hash>.json`` so that a rerun resumes.

A unit's hash covers the base model's weights hash, the resolved run config (runtime keys aside), the unit's kind
and its parameters: change any of them and the unit runs again. Every unit calls the package's one entry point for
its stage (``ColdItemEditor`` via ``runs.edit``, ``runs.evaluate``, ``runs.sweep``, ``runs.ablate``,
``baselines``); nothing here re-implements a pipeline.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Callable

from genrecedit.atomic import write_json
from genrecedit.config import cache_view
from genrecedit.edit.editor import ColdItemEditor
from genrecedit.errors import ConfigError, EmptyInputError, GenRecEditError
from genrecedit.runs.ablate import ablate
from genrecedit.runs.backbone import LoadedRun
from genrecedit.runs.edit import build_requests, make_editor
from genrecedit.runs.evaluate import evaluate_model, evaluation_cases, popularity_results
from genrecedit.runs.sweep import sweep

RUNTIME_KEYS = ("threads", "device", "cache_dir", "data_root")  # config keys that do not change a result


class CellCache:
    """``get(kind, params, compute)``: the cached JSON of a unit, or ``compute()`` written atomically."""

    def __init__(self, out_dir: Path, run: LoadedRun) -> None:
        self.dir = Path(out_dir) / "cells"
        config = {k: v for k, v in cache_view(run.config.to_dict()).items() if k not in RUNTIME_KEYS}
        self.context = {"base": run.base_hash, "config": config}
        self.reused: list[str] = []
        self.computed: list[str] = []

    def key(self, kind: str, params: dict) -> str:
        recipe = json.dumps([self.context, kind, params], sort_keys=True, default=str)
        return hashlib.sha256(recipe.encode()).hexdigest()[:16]

    def get(self, kind: str, params: dict, compute: Callable[[], dict]) -> dict:
        path = self.dir / f"{self.key(kind, params)}.json"
        label = f"{kind} {json.dumps(params, sort_keys=True, default=str)}"
        if path.exists():
            self.reused.append(label)
            return json.loads(path.read_text())["result"]
        result = compute()
        write_json(path, {"kind": kind, "params": params, "result": result})
        self.computed.append(label)
        return result


def variant(run: LoadedRun, *, cases: str | None = None, max_cases: int | None | str = "keep",
            lam: float | None = None, n: int | None = None, source: str | None = None) -> LoadedRun:
    """``run`` with another evaluation split / case budget / λ / n / knowledge source (model shared)."""
    cfg = run.config
    ev = cfg.eval if cases is None else dataclasses.replace(cfg.eval, cases=cases)
    if max_cases != "keep":
        ev = dataclasses.replace(ev, max_cases=max_cases)
    edit = cfg.edit if lam is None else dataclasses.replace(cfg.edit, lam=float(lam))
    know = cfg.knowledge
    if n is not None:
        know = dataclasses.replace(know, histories_per_item=int(n))
    if source is not None:
        know = dataclasses.replace(know, source=source)
    return dataclasses.replace(run, config=dataclasses.replace(cfg, eval=ev, edit=edit, knowledge=know))


def cases_params(run: LoadedRun) -> dict:
    return {"cases": run.config.eval.cases, "max_cases": run.config.eval.max_cases, "seed": run.config.eval.seed}


# --- units ---------------------------------------------------------------------------------------------------
def tiger(cache: CellCache, run: LoadedRun) -> dict:
    def compute() -> dict:
        result, seconds = evaluate_model(run, evaluation_cases(run), desc="TIGER")
        return {"summary": result.summary(), "seconds": seconds}
    return cache.get("tiger", cases_params(run), compute)


def popularity(cache: CellCache, run: LoadedRun) -> dict:
    def compute() -> dict:
        return {name: r.summary() for name, r in popularity_results(run, evaluation_cases(run)).items()}
    return cache.get("popularity", cases_params(run), compute)


def baseline(cache: CellCache, run: LoadedRun, name: str, params: dict, out_dir: Path) -> dict:
    """A registry baseline fitted on the run and scored on the same cases, or ``{"not_available": reason}``."""
    try:
        from genrecedit.baselines.registry import BASELINES
        from genrecedit.baselines.runner import run_baseline
    except ImportError as err:  # the baselines package is optional for the runner
        return {"not_available": f"baselines package not importable ({err})"}
    if name not in BASELINES:
        return {"not_available": f"baseline {name!r} is not in the registry ({sorted(BASELINES)})"}

    def compute() -> dict:
        res = run_baseline(run, name, params, out_dir / name, evaluation_cases(run))
        return {"summary": res.summary, "fit_seconds": res.fit_seconds, "recommend_seconds": res.recommend_seconds,
                "reused_fit": res.reused, "best_valid_ndcg10": res.best_valid_ndcg10}
    return cache.get("baseline", {"name": name, "params": params, **cases_params(run)}, compute)


def selection(cache: CellCache, valid_run: LoadedRun, lams: list[float], ns: list[int], max_warm_drop: float,
              out_dir: Path) -> dict:
    """``runs.sweep.sweep`` on validation cases (never test), one cached call per (λ, n) so that an interrupted
    selection resumes, combined with the sweep's own rule: the best overall NDCG@10 among cells whose warm NDCG@10
    drop is at most ``max_warm_drop``, when it beats the unedited base.

    When no cell beats the base the experiment still needs a GenRecEdit row, so it takes the best cell within the
    bound (or, when none is within it, the smallest warm drop) and says so in ``chosen_by``.
    """
    if valid_run.config.eval.cases != "valid":
        raise ConfigError("hyper-parameters are selected on validation cases only")
    parts = []
    for lam, n in itertools.product([float(x) for x in lams], [int(x) for x in ns]):
        parts.append(cache.get("sweep", {"lam": lam, "n": n, "max_warm_drop": max_warm_drop,
                                         **cases_params(valid_run)},
                               lambda lam=lam, n=n: sweep(valid_run, [lam], [n], Path(out_dir) / f"lam{lam:g}-n{n}",
                                                          max_warm_drop)))
    base, cells = parts[0]["base"], [c for p in parts for c in p["cells"]]
    ok = [c for c in cells if c["warm_ndcg10_drop"] <= max_warm_drop]
    best = max(ok, key=lambda c: c["metrics"]["overall"]["ndcg@10"], default=None)
    if best is not None and best["metrics"]["overall"]["ndcg@10"] > base["overall"]["ndcg@10"]:
        how = "sweep rule: best overall NDCG@10 within the warm-drop bound, above the unedited base"
    elif best is not None:
        how = "fallback: no cell beat the unedited base; best overall NDCG@10 within the warm-drop bound"
    else:
        best = min(cells, key=lambda c: c["warm_ndcg10_drop"])
        how = "fallback: no cell within the warm-drop bound; smallest warm drop"
    return {"base": base, "cells": cells, "chosen": {"lam": best["lam"], "n": best["n"]}, "chosen_by": how,
            "max_warm_drop": max_warm_drop, "cases": parts[0]["cases"], "n_cases": parts[0]["n_cases"]}


def _report(report) -> dict:
    return {"layers": report.layers, "probe": report.probe, "efficacy": report.efficacy,
            "converged": report.converged, "n_items": report.n_items, "n_requests": report.n_requests,
            "timings_s": report.timings_s, "c0_cached": report.c0_cached}


def edited(cache: CellCache, run: LoadedRun, source: str, lam: float, n: int) -> dict:
    """Edit with (source, λ, n) and score on ``run``'s evaluation cases."""
    cell_run = variant(run, lam=lam, n=n, source=source)

    def compute() -> dict:
        requests = build_requests(cell_run)
        if len(requests) == 0:
            raise EmptyInputError(f"knowledge source {source!r} gives no edit requests on this split")
        artifact, report = make_editor(cell_run).edit(requests, run.prepared.codes, run.prepared.split.item_ids)
        schedule = artifact.schedule(run.config.eval.trigger, run.recommender.device)
        result, seconds = evaluate_model(cell_run, evaluation_cases(cell_run), schedule,
                                         desc=f"GenRecEdit {source} λ={lam:g} n={n}")
        return {"summary": result.summary(), "report": _report(report), "eval_seconds": seconds}
    try:
        return cache.get("edit", {"source": source, "lam": float(lam), "n": int(n), **cases_params(run)}, compute)
    except EmptyInputError as err:  # e.g. "observed" on an item-holdout split, which deletes cold items' valid data
        return {"not_available": str(err)}


def ablations(cache: CellCache, run: LoadedRun, lam: float, n: int, seeds: list[int], out_dir: Path) -> dict:
    """Table 3: ``runs.ablate.ablate`` at the chosen (λ, n) (its own per-(cell, seed) cache lives in out_dir)."""
    cell_run = variant(run, lam=lam, n=n)
    return cache.get("ablations", {"lam": float(lam), "n": int(n), "seeds": list(seeds), **cases_params(run)},
                     lambda: ablate(cell_run, out_dir, list(seeds)))


def update_times(cache: CellCache, run: LoadedRun, lam: float, n: int, retrain_budget: dict, finetune_args: dict,
                 out_dir: Path) -> dict:
    """Table 4 in one process: GenRecEdit with C0 computed (a fresh C0 cache) and cached, Finetune, Retrain, all on
    the same pseudo requests; Finetune and Retrain are also scored on the evaluation cases (Table 1 rows)."""
    cell_run = variant(run, lam=lam, n=n, source="pseudo")

    def compute() -> dict:
        from genrecedit.baselines.update import finetune, retrain  # optional: a missing module skips the unit

        requests = build_requests(cell_run)
        cases = evaluation_cases(cell_run)
        out: dict = {"n_requests": len(requests)}
        c0_dir = Path(out_dir) / "c0-cold"
        shutil.rmtree(c0_dir, ignore_errors=True)  # a fresh C0 cache: the "cold" timing computes C0
        edit_cfg = dataclasses.replace(cell_run.config.edit, seed=cell_run.config.seed)
        for label in ("GenRecEdit (C0 cold)", "GenRecEdit (C0 cached)"):
            editor = ColdItemEditor(run.recommender, run.prepared.split.train, run.base_hash, edit_cfg, c0_dir)
            t0 = time.perf_counter()
            _, report = editor.edit(requests, run.prepared.codes, run.prepared.split.item_ids)
            out[label] = {"seconds": report.timings_s["update_total"], "wall_seconds": time.perf_counter() - t0,
                          "c0_cached": report.c0_cached, "timings_s": report.timings_s}
        shutil.rmtree(c0_dir, ignore_errors=True)
        for label, fn, kwargs in (("Finetune", finetune, finetune_args), ("Retrain", retrain, retrain_budget)):
            upd = fn(cell_run, requests, Path(out_dir) / label.lower(), **kwargs)
            result, _ = evaluate_model(upd.as_run(cell_run), cases, desc=f"evaluate {label}")
            out[label] = {"seconds": upd.wall_seconds, "epochs": upd.epochs, "n_samples": upd.n_samples,
                          "peak_rss_mb": upd.peak_rss_mb, "summary": result.summary(), "args": kwargs}
        return out
    params = {"lam": float(lam), "n": int(n), "retrain": retrain_budget, "finetune": finetune_args,
              **cases_params(run)}
    try:
        return cache.get("update_times", params, compute)
    except ImportError as err:
        return {"not_available": f"baselines.update not importable ({err})"}
    except GenRecEditError as err:
        return {"not_available": f"update baselines failed: {err}"}
