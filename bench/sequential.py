"""Sequential edits: R rounds of new items, each solved against the model edited by the rounds before
(``ColdItemEditor.edit(previous=...)``); after each round, warm metrics, all-cold-so-far metrics and the first
round's items' metrics (are earlier rounds still recommended?).

    python bench/sequential.py --size full --out runs/bench/full
"""
from __future__ import annotations


import numpy as np

from common import (bench_setup, cases_with_items, evaluate, hardware, md_table,
                    warm_drop, write_result)
from genrecedit.baselines.update import measure
from genrecedit.runs.edit import build_requests, make_editor

NAME = "sequential"


def main() -> None:
    args, cfg, out_dir, run = bench_setup(NAME, __doc__)
    hw = hardware()
    split, codes = run.prepared.split, run.prepared.codes
    n_rounds, per_round = int(cfg["rounds"]), int(cfg["items_per_round"])
    order = np.random.default_rng(1).permutation(split.cold_items())
    per_round = min(per_round, len(order) // n_rounds)
    rounds = [np.sort(order[r * per_round : (r + 1) * per_round]) for r in range(n_rounds)]
    cases = cases_with_items(run, cfg["eval_cases"], np.concatenate(rounds))
    base, _ = evaluate(run, cases, groups={"round 1": rounds[0], "all rounds": np.concatenate(rounds)})
    editor = make_editor(run)
    artifact, results, rows = None, [], []
    for r, items in enumerate(rounds):
        with measure() as m:
            artifact, report = editor.edit(build_requests(run, items), codes, split.item_ids, previous=artifact)
        so_far = np.concatenate(rounds[: r + 1])
        metrics, eval_s = evaluate(run, cases, artifact.schedule(run.config.eval.trigger, run.recommender.device),
                                   {"cold so far": so_far, "round 1": rounds[0], "this round": items})
        res = {"round": r + 1, "n_items": report.n_items, "n_requests": report.n_requests,
               "update_seconds": report.timings_s["update_total"], "peak_rss_mb": m.peak_rss_mb,
               "efficacy": report.efficacy, "metrics": metrics, "warm_ndcg10_drop": warm_drop(base, metrics),
               "eval_seconds": eval_s}
        results.append(res)
        rows.append([r + 1, len(so_far), res["update_seconds"], metrics["warm"]["ndcg@10"], res["warm_ndcg10_drop"],
                     metrics["cold so far"]["recall@10"], metrics["cold so far"]["ndcg@10"],
                     metrics["round 1"]["recall@10"], metrics["this round"]["recall@10"]])
        print(f"[{NAME}] round {r + 1}: update {res['update_seconds']:.1f} s, warm drop {res['warm_ndcg10_drop']}",
              flush=True)
    rows.insert(0, [0, 0, None, base["warm"]["ndcg@10"], None, base["all rounds"]["recall@10"],
                    base["all rounds"]["ndcg@10"], base["round 1"]["recall@10"], None])
    table = md_table(["round", "items so far", "update s", "warm N@10", "warm N@10 drop", "cold-so-far R@10",
                      "cold-so-far N@10", "round-1 items R@10", "this round R@10"], rows)
    table += (f"\nBase {cfg['base']['run_dir']}; {n_rounds} rounds × {per_round} items; {len(cases):,} test cases "
              f"({cfg['eval_cases']} sampled + cases of the rounds' items). Row 0 is the unedited model (its "
              "cold-so-far column covers all rounds' items). Goal: warm drop ≤ 5 % after 10 rounds.\n")
    write_result(out_dir, NAME, {"size": args.size, "config": cfg, "hardware": hw, "base_metrics": base,
                                 "rounds": results}, table, f"Sequential edits ({args.size})")
    print(table)


if __name__ == "__main__":
    main()
