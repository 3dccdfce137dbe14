"""Update cost (docs/method.md §5.9): the same cold items taught by GenRecEdit (C0 cold, C0 cached), Finetune and
Retrain, side by side in one run: wall time, peak memory (RSS), ratios, and the updated models' test metrics.

Each update runs in its own process, so its peak RSS (``resource.getrusage``) is its own. The edit's time is
docs/method.md §5.9's update time (keys + probe + δ + solve, + C0 when not cached); ``edit() wall`` adds the efficacy
diagnostics it also computes.

    python bench/update_cost.py --size smoke --out runs/bench/smoke
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import base_spec, bench_config, ensure_base, evaluate, hardware, md_table, test_sample, write_result
from genrecedit.atomic import write_json
from genrecedit.baselines.update import finetune, measure, retrain
from genrecedit.edit.editor import ColdItemEditor
from genrecedit.runs.edit import build_requests, make_editor

METHODS = ("edit-cold", "edit-cached", "finetune", "retrain")
NAME = "update_cost"


def child(method: str, cfg: dict, work: Path) -> dict:
    """Run one update in this process and return its cost (and metrics when ``eval_cases`` > 0)."""
    run = ensure_base(base_spec(cfg["base"]))
    items = run.prepared.split.cold_items()
    if cfg.get("n_items"):
        items = np.sort(np.random.default_rng(0).choice(items, min(cfg["n_items"], len(items)), replace=False))
    requests = build_requests(run, items)
    out: dict = {"method": method, "n_items": len(np.unique(requests.items)), "n_requests": len(requests)}
    schedule, eval_run = None, run
    if method.startswith("edit"):
        base_editor = make_editor(run)
        editor = ColdItemEditor(run.recommender, run.prepared.split.train, run.base_hash, base_editor.cfg, work / "c0")
        with measure() as m:
            artifact, report = editor.edit(requests, run.prepared.codes, run.prepared.split.item_ids)
        out.update(seconds=report.timings_s["update_total"], edit_call_seconds=m.wall_seconds,
                   timings_s=report.timings_s, c0_cached=report.c0_cached, efficacy=report.efficacy,
                   layers=report.layers)
        schedule = artifact.schedule(run.config.eval.trigger, run.recommender.device)
    else:
        if method == "finetune":
            result = finetune(run, requests, work / "finetune", epochs=int(cfg.get("finetune_epochs", 3)))
        else:
            result = retrain(run, requests, work / "retrain", **(cfg.get("retrain_budget") or {}))
        m = result
        out.update(seconds=result.wall_seconds, epochs=result.epochs, n_samples=result.n_samples,
                   history=result.history)
        eval_run = result.as_run(run)
    out.update(peak_rss_mb=m.peak_rss_mb, peak_rss_increase_mb=m.peak_rss_increase_mb,
               rss_start_mb=m.rss_start_mb, cpu_seconds=m.cpu_seconds, peak_reset=getattr(m, "peak_reset", None),
               threads=run.config.threads)
    if cfg.get("eval_cases"):
        cases = test_sample(run, cfg["eval_cases"])
        out["metrics"], out["eval_seconds"] = evaluate(eval_run, cases, schedule)
        if method == "edit-cached":
            out["base_metrics"], _ = evaluate(run, cases)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="smoke", help="bench/configs/<size>.yaml")
    ap.add_argument("--out", type=Path, default=None, help="default runs/bench/<size>")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--reuse", action="store_true", help="keep per-method results already in the work dir")
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = bench_config(args.size)[NAME]
    out_dir = args.out or Path("runs/bench") / args.size
    work = out_dir / NAME
    if args.child:
        write_json(work / f"{args.child}.json", child(args.child, cfg, work))
        return
    hw = hardware()
    ensure_base(base_spec(cfg["base"]))  # train once here, not inside a timed child
    methods = [m for m in METHODS if m in args.methods.split(",")]
    for method in methods:
        if args.reuse and (work / f"{method}.json").exists():
            continue
        if method == "edit-cold" and (work / "c0").exists():
            shutil.rmtree(work / "c0")  # C0 cold means no cache: edit-cold builds the one edit-cached then reads
        print(f"[{NAME}] {method} ...", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--size", args.size, "--out", str(out_dir), "--child", method],
                       check=True)
        print(f"[{NAME}] {method} done in {time.perf_counter() - t0:.0f} s", flush=True)
    results = {m: json.loads((work / f"{m}.json").read_text()) for m in METHODS if (work / f"{m}.json").exists()}
    write_report(out_dir, args.size, cfg, results, hw)


def ratio(a: dict | None, b: dict | None, key: str = "seconds") -> float | None:
    return a[key] / b[key] if a and b and a.get(key) and b.get(key) else None


def write_report(out_dir: Path, size: str, cfg: dict, results: dict, hw: dict) -> None:
    retrain_r, finetune_r = results.get("retrain"), results.get("finetune")
    ratios = {f"{e}/{b} ({key})": ratio(results.get(e), ref, key) for e in ("edit-cached", "edit-cold")
              for b, ref in (("retrain", retrain_r), ("finetune", finetune_r)) for key in ("seconds", "cpu_seconds")}
    rows = []
    for m, r in results.items():
        metrics = r.get("metrics", {})
        rows.append([m, r["seconds"], r.get("cpu_seconds"), r.get("epochs"), r["peak_rss_mb"],
                     r["peak_rss_increase_mb"], ratio(r, retrain_r), ratio(r, finetune_r),
                     ratio(r, retrain_r, "cpu_seconds"), ratio(r, finetune_r, "cpu_seconds"),
                     metrics.get("warm", {}).get("ndcg@10"), metrics.get("cold", {}).get("recall@10")])
    base = results.get("edit-cached", {}).get("base_metrics")
    if base:
        rows.append(["TIGER (no update)"] + [None] * 9 + [base["warm"]["ndcg@10"], base["cold"]["recall@10"]])
    any_r = next(iter(results.values()), {})
    table = md_table(["update", "wall s", "CPU s", "epochs", "peak RSS MiB", "RSS increase MiB", "wall ÷ Retrain",
                      "wall ÷ Finetune", "CPU ÷ Retrain", "CPU ÷ Finetune", "warm N@10", "cold R@10"], rows)
    table += (f"\n{any_r.get('n_items')} cold items, {any_r.get('n_requests')} pseudo-histories; base "
              f"{cfg['base']['run_dir']}; threads {any_r.get('threads')}. Edit wall s = docs/method.md §5.9 update "
              "time (keys + probe + δ + solve, + C0 when cold); CPU s = process CPU time of the whole call (the edit's "
              "includes its efficacy diagnostics). Goals: edit ≤ 5 % of Retrain (goal 2 %), ≤ 15 % of Finetune.\n")
    write_result(out_dir, NAME, {"size": size, "config": cfg, "hardware": hw, "ratios": ratios, "results": results},
                 table, f"Update cost ({size})")
    print(table)


if __name__ == "__main__":
    main()
