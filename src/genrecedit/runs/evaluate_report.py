"""``genrecedit evaluate``: base (and optionally edited) model vs popularity baselines, with bootstrap intervals."""
from __future__ import annotations

from pathlib import Path

from genrecedit.edit.artifact import EditArtifact
from genrecedit.evaluation.report import EvalResult, bootstrap_ci, format_table, paired_bootstrap_diff, write_metrics
from genrecedit.runs.backbone import load_run
from genrecedit.runs.evaluate import evaluate_model, popularity_results, evaluation_cases
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
    results["TIGER"], _ = evaluate_model(run, cases, desc="evaluate base")
    if edits is not None:
        artifact = EditArtifact.load(edits, run.base_hash)
        schedule = artifact.schedule(run.config.eval.trigger, run.recommender.device)
        results["GenRecEdit"], _ = evaluate_model(run, cases, schedule, desc="evaluate edited")
    results.update(popularity_results(run, cases))
    write_metrics(Path(run_dir), name, {k: v.summary() for k, v in results.items()})
    n_boot, seed = run.config.eval.bootstrap, run.config.eval.seed
    extra = {"intervals": intervals(results, n_boot, seed), "n_cases": len(cases)}
    if "GenRecEdit" in results:
        extra["edited_minus_base"] = paired_gains(results["GenRecEdit"], results["TIGER"], n_boot, seed)
    write_json(Path(run_dir) / f"{name}_intervals.json", extra)
    return format_table({k: v.summary() for k, v in results.items()}) + \
        f"\n\nwritten: {Path(run_dir) / (name + '.md')}, {name}.json, {name}.png, {name}_intervals.json"
