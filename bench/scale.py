"""Scale: one edit of N cold items for growing N (nested, seeded item sets) on an item-holdout run: edit time,
peak memory (RSS), efficacy, warm/cold/edited-item metrics against the unedited model.

    python bench/scale.py --size full --out runs/bench/full
"""
from __future__ import annotations


import numpy as np

from common import (bench_setup, cases_with_items, evaluate, hardware, md_table,
                    warm_drop, write_result)
from genrecedit.baselines.update import measure
from genrecedit.runs.edit import build_requests, make_editor

NAME = "scale"


def main() -> None:
    args, cfg, out_dir, run = bench_setup(NAME, __doc__)
    hw = hardware()
    split, codes = run.prepared.split, run.prepared.codes
    order = np.random.default_rng(0).permutation(split.cold_items())
    sizes = [int(s) for s in cfg["sizes"]]
    cases = cases_with_items(run, cfg["eval_cases"], order[: max(sizes)])
    base, base_s = evaluate(run, cases)
    print(f"[{NAME}] {len(order)} cold items; base evaluated on {len(cases)} cases in {base_s:.0f} s", flush=True)
    editor = make_editor(run)
    results, rows = [], []
    for n in sizes:
        if n > len(order):
            print(f"[{NAME}] skipping {n}: only {len(order)} cold items", flush=True)
            results.append({"n_items": n, "skipped": f"only {len(order)} cold items"})
            continue
        items = np.sort(order[:n])
        requests = build_requests(run, items)
        with measure() as m:
            artifact, report = editor.edit(requests, codes, split.item_ids)
        metrics, eval_s = evaluate(run, cases, artifact.schedule(run.config.eval.trigger, run.recommender.device),
                                   {"edited": items})
        r = {"n_items": report.n_items, "n_requests": report.n_requests, "update_seconds": report.timings_s[
            "update_total"], "edit_call_seconds": m.wall_seconds, "timings_s": report.timings_s,
             "c0_cached": report.c0_cached, "peak_rss_mb": m.peak_rss_mb, "peak_rss_increase_mb":
             m.peak_rss_increase_mb, "efficacy": report.efficacy, "layers": report.layers, "metrics": metrics,
             "warm_ndcg10_drop": warm_drop(base, metrics), "eval_seconds": eval_s}
        results.append(r)
        rows.append([n, report.n_requests, r["update_seconds"], m.wall_seconds, m.peak_rss_mb,
                     m.peak_rss_increase_mb, report.efficacy["after"][0], metrics["warm"]["ndcg@10"],
                     r["warm_ndcg10_drop"], metrics["cold"]["recall@10"], metrics["edited"]["recall@10"],
                     metrics["edited"]["n_cases"]])
        print(f"[{NAME}] {n} items: update {r['update_seconds']:.1f} s, warm drop {r['warm_ndcg10_drop']}",
              flush=True)
    rows.insert(0, ["0 (TIGER)", None, None, None, None, None, None, base["warm"]["ndcg@10"], None,
                    base["cold"]["recall@10"], None, None])
    table = md_table(["items", "requests", "update s", "edit() wall s", "peak RSS MiB", "RSS increase MiB",
                      "efficacy p0", "warm N@10", "warm N@10 drop", "cold R@10", "edited R@10", "edited cases"], rows)
    table += (f"\nBase {cfg['base']['run_dir']} ({split.protocol}, {len(order):,} cold items); {len(cases):,} test "
              f"cases ({cfg['eval_cases']} sampled + cases of the edited items); beam {run.config.decode.beam}. "
              "Goal: 10,000 items ≤ 10 min on 2 cores with warm NDCG@10 drop ≤ 5 %.\n")
    write_result(out_dir, NAME, {"size": args.size, "config": cfg, "hardware": hw, "base_metrics": base,
                                 "n_cold_items": len(order), "results": results}, table, f"Scale ({args.size})")
    print(table)


if __name__ == "__main__":
    main()
