"""``genrecedit evaluate``: base (and optionally edited) model vs popularity baselines, with bootstrap intervals and
the new items' exposure; with the run's text-only recipe adopted by ``coldstart`` (the calibrated insertion its
config names, or the content prior with ``prior.enabled``) each model is also scored with it, as the service serves
it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from genrecedit.coldstart.exposure import exposure
from genrecedit.edit.artifact import EditArtifact
from genrecedit.evaluation.report import EvalResult, bootstrap_ci, format_table, paired_bootstrap_diff, write_metrics
from genrecedit.runs.backbone import load_run
from genrecedit.runs.coldstart import adopted_insertion, make_prior, new_items
from genrecedit.runs.evaluate import evaluation_cases, popularity_results, score_topk
from genrecedit.atomic import write_json

CI_METRICS = ("recall@10", "ndcg@10")


def intervals(results: dict[str, EvalResult], n_boot: int, seed: int) -> dict:
    """95 % bootstrap intervals of R@10 / N@10 per model and subset."""
    out: dict = {}
    for model, res in results.items():
        for subset in ("overall", "warm", "cold"):
            for metric in CI_METRICS:
                values = res.per_case(metric, subset)
                if len(values):
                    lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
                    out.setdefault(model, {}).setdefault(subset, {})[metric] = [float(values.mean()), lo, hi]
    return out


def paired_gains(edited: EvalResult, base: EvalResult, n_boot: int, seed: int) -> dict:
    """Edited − base per subset and metric: (mean difference, 95 % paired bootstrap interval)."""
    out: dict = {}
    for subset in ("overall", "warm", "cold"):
        for metric in CI_METRICS:
            a, b = edited.per_case(metric, subset), base.per_case(metric, subset)
            if len(a):
                out.setdefault(subset, {})[metric] = list(paired_bootstrap_diff(a, b, n_boot=n_boot, seed=seed))
    return out


def evaluate_report(run_dir: Path, overrides: list[str], edits: Path | None, name: str) -> str:
    run = load_run(run_dir, overrides)
    run.config.save(Path(run_dir) / f"{name}_config.yaml")  # the resolved config these metrics come from
    cases = evaluation_cases(run)
    results: dict[str, EvalResult] = {}
    lists: dict[str, np.ndarray] = {}
    insertion = adopted_insertion(run)
    prior = make_prior(run, run.config.prior) if run.config.prior.enabled and insertion is None else None
    new = new_items(run)

    def decode(name: str, schedule) -> None:
        """``name``'s lists, and with the run's recipe the same beams with it ("+ insertion" / "+ prior")."""
        beams = run.recommender.recommend(cases.histories, run.config.decode, schedule, progress=f"evaluate {name}",
                                          record_levels=prior is not None)
        lists[name] = beams.items.numpy()
        if insertion is not None:
            # served as a service would: a fresh exposure cap, the cases in time order
            lists[f"{name} + insertion"] = insertion.apply(
                run.prepared.embeddings, run.prepared.codes, new, cases.histories, beams,
                cap=insertion.cfg.exposure_cap(), order=np.argsort(cases.timestamps, kind="stable")).items.numpy()
        elif prior is not None:
            lists[f"{name} + prior"] = prior.apply(cases.histories, beams).items.numpy()

    decode("TIGER", None)
    if edits is not None:
        artifact = EditArtifact.load(edits, run.base_hash)
        decode("GenRecEdit", artifact.schedule(run.config.eval.trigger, run.recommender.device))
    results.update({name: score_topk(run, topk, cases) for name, topk in lists.items()})
    results.update(popularity_results(run, cases))
    write_metrics(Path(run_dir), name, {k: v.summary() for k, v in results.items()})
    n_boot, seed = run.config.eval.bootstrap, run.config.eval.seed
    extra = {"intervals": intervals(results, n_boot, seed), "n_cases": len(cases),
             "exposure": {name: exposure(topk, new, 10) for name, topk in lists.items()}}
    if "GenRecEdit" in results:
        extra["edited_minus_base"] = paired_gains(results["GenRecEdit"], results["TIGER"], n_boot, seed)
    extra["minus_base"] = {name: paired_gains(results[name], results["TIGER"], n_boot, seed)
                           for name in lists if name != "TIGER"}
    write_json(Path(run_dir) / f"{name}_intervals.json", extra)
    return format_table({k: v.summary() for k, v in results.items()}) + \
        f"\n\nwritten: {Path(run_dir) / (name + '.md')}, {name}.json, {name}.png, {name}_intervals.json"
