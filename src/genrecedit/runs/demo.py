"""The demo: train a small TIGER on ML-100k (item-holdout), make the held-out items recommendable in two settings,
and compare before/after on the test set. ``make demo`` runs this.

* ``text_only``: the items have only their text (what ``POST /items`` gets): the recipe ``coldstart`` chooses on
  validation (the content prior or the calibrated insertion; ``coldstart*.json`` beside the report), next to the
  text-only baselines.
* ``early_feedback``: the items' first interactions (the validation period) are known: GenRecEdit learns them
  (observed knowledge, λ re-fit on validation).
"""
from __future__ import annotations

import time
from pathlib import Path

from genrecedit.config import RunConfig
from genrecedit.evaluation.report import format_table, write_metrics
from genrecedit.coldstart.exposure import exposure
from genrecedit.runs.backbone import load_run, train_backbone
from genrecedit.runs.coldstart import INSERTION, ColdstartSpec, adopt, coldstart, decode, new_items
from genrecedit.runs.edit import edit_run
from genrecedit.runs.evaluate import evaluate_model, evaluation_cases, popularity_results, score_topk
from genrecedit.atomic import write_json

REPORT_KEYS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@50", "ndcg@50", "iid_ratio@10", "n_cases")


SETTING_KEYS = ("recall@10", "ndcg@10")
EXPOSURE_KEYS = ("new_item_slot_share", "max_item_share", "unreached_items")


def run_demo(cfg: RunConfig, run_dir: Path, echo=print, upper_bound: bool = False,
             coldstart_spec: ColdstartSpec | None = None) -> dict:
    """base → early-feedback edit → text-only recipe → evaluate; writes ``report.json`` (dataset, base, edited
    (the early-feedback edit), settings {text_only, early_feedback}, timing_s) and metrics tables. The text-only recipe
    chosen on validation is adopted into the run (``coldstart.adopt``), so ``genrecedit serve`` serves it."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    _, trained = train_backbone(cfg, run_dir)
    # a finished run is reused (no training now): the edit is compared with what training took when it ran
    train_s = max(time.perf_counter() - t0, trained.train_seconds)
    run = load_run(run_dir)
    cases = evaluation_cases(run)
    t0 = time.perf_counter()
    test_beams = decode(run, cases, None, "evaluate base")  # with the levels the text-only recipes read, once
    base, base_s = score_topk(run, test_beams.items.numpy(), cases), time.perf_counter() - t0
    t0 = time.perf_counter()
    artifact, report = edit_run(run, run_dir)
    edit_wall_s = time.perf_counter() - t0  # with edit.refit: the λ re-fit on validation included
    lam = artifact.batches[-1].meta["lam"]  # the shipped λ (re-fit or the config's)
    edited_items = run.recommender.recommend(
        cases.histories, run.config.decode, artifact.schedule(run.config.eval.trigger, run.recommender.device),
        progress="evaluate edited").items.numpy()
    edited = score_topk(run, edited_items, cases)
    results = {"TIGER": base.summary(), "GenRecEdit": edited.summary()}
    if upper_bound:
        # the same edit fed the cold items' true test histories: an analysis row that shows what the edit can do
        # with perfect knowledge (it reads the test set, so it is never a method to deploy)
        # (at the shipped λ: no re-fit, which would decode validation with test knowledge)
        ub_run = run.with_settings("knowledge", source="upper_bound").with_settings(
            "edit", lam=lam, refit=None)
        ub_artifact, _ = edit_run(ub_run, run_dir / "upper_bound")
        ub, _ = evaluate_model(run, cases, ub_artifact.schedule(run.config.eval.trigger, run.recommender.device),
                               desc="evaluate upper bound")
        results["UpperBound (test histories)"] = ub.summary()
    results.update({name: r.summary() for name, r in popularity_results(run, cases).items()})
    write_metrics(run_dir, "metrics", results)
    t0 = time.perf_counter()
    # selection reads every validation case of the period, the users with no test interaction too: the split
    # keeps 166 of ML-100k's 943 users, whose 1,513 warm validation cases leave the warm drop's interval ±11 points
    # wide (docs/results.md, "ML-100k launch")
    spec = coldstart_spec or ColdstartSpec(valid_max_cases=None, valid_users="all")
    text_only = coldstart(run, run_dir, spec, echo=echo, test_beams=test_beams)
    coldstart_s = time.perf_counter() - t0
    adopt(run_dir, text_only, run_dir)
    new = new_items(run)
    early = {"base": _setting_row(results["TIGER"]), "edited": _setting_row(results["GenRecEdit"]),
             "exposure": {k: v for k, v in exposure(edited_items, new, 10).items() if k in EXPOSURE_KEYS},
             "recipe": {"knowledge": run.config.knowledge.source, "trigger": run.config.eval.trigger, "lam": lam}}
    recipe = text_only["recipe"]
    shipped = None if recipe is None else text_only["systems"][recipe]
    text = {"base": _setting_row(text_only["systems"]["TIGER"]),
            "edited": None if shipped is None else _setting_row(shipped),
            "exposure": None if shipped is None else {k: shipped["exposure"][k] for k in EXPOSURE_KEYS},
            "recipe": {"served": recipe, "objective": text_only["objective"], "prior": text_only["chosen_prior"],
                       "insertion": text_only["chosen_insertion"]},
            "intervals": None if shipped is None else shipped["vs_base"],
            "best_baseline": text_only["best_baseline"],
            "vs_best_baseline": text_only.get("insertion_vs_best_baseline" if recipe == INSERTION
                                              else "prior_vs_best_baseline")}
    out = {
        "dataset": cfg.dataset,
        "base": {s: {k: v for k, v in results["TIGER"][s].items() if k in REPORT_KEYS} for s in results["TIGER"]},
        "edited": {s: {k: v for k, v in results["GenRecEdit"][s].items() if k in REPORT_KEYS}
                   for s in results["GenRecEdit"]},
        "settings": {"text_only": text, "early_feedback": early},
        "timing_s": {"train": train_s, "edit": report.timings_s["update_total"], "evaluate_base": base_s,
                     "edit_wall": edit_wall_s, "coldstart": coldstart_s},
        "edit": {"layers": report.layers, "n_items": report.n_items, "n_requests": report.n_requests,
                 "converged": report.converged, "efficacy": report.efficacy, "c0_cached": report.c0_cached,
                 "trigger": run.config.eval.trigger, "lam": lam,
                 "lam_selected": run.config.edit.lam},
    }
    write_json(run_dir / "report.json", out)
    echo(format_table(results))
    echo(f"\nedit: {report.n_items} items, {report.n_requests} requests, layers {report.layers}, "
         f"λ {lam:.4g}"
         + (f" (re-fit from {run.config.edit.lam:g}: {run_dir / 'calibrate.json'})" if run.config.edit.refit else "")
         + ", "
         f"decoded with trigger {run.config.eval.trigger}, "
         f"efficacy before {report.efficacy['before']} after {report.efficacy['after']}")
    echo(f"time: train {train_s:.0f}s, edit {report.timings_s['update_total']:.1f}s "
         f"({100 * report.timings_s['update_total'] / max(train_s, 1e-9):.1f}% of training)"
         + (f", λ re-fit + edit {edit_wall_s:.0f}s" if run.config.edit.refit else ""))
    echo(f"written: {run_dir / 'report.json'}, {run_dir / 'metrics.md'}, {run_dir / 'coldstart.json'}")
    return out


def _setting_row(summary: dict) -> dict:
    return {s: {k: summary[s][k] for k in SETTING_KEYS} for s in ("overall", "warm", "cold")}
