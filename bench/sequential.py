"""Sequential edits: R rounds of new items, each solved against the model edited by the rounds before
(``ColdItemEditor.edit(previous=...)``); after each round, warm metrics (with a paired bootstrap interval of the
drop), all-cold-so-far metrics and the first round's items' metrics (are earlier rounds still recommended?).

Round items are drawn from the cold items the run's knowledge source has edit requests for (with observed knowledge:
the items that received feedback in the validation period; the others cannot be edited and are reported apart).

    python bench/sequential.py --size full --out runs/bench/full
"""
from __future__ import annotations


import numpy as np

from common import (bench_setup, cases_with_items, drop_with_ci, evaluate_detailed, hardware, md_table,
                    warm_drop, write_result)
from genrecedit.baselines.update import measure
from genrecedit.runs.edit import build_requests, make_editor

NAME = "sequential"


def main() -> None:
    args, cfg, out_dir, run = bench_setup(NAME, __doc__)
    hw = hardware()
    split, codes = run.prepared.split, run.prepared.codes
    n_rounds, per_round = int(cfg["rounds"]), int(cfg["items_per_round"])
    cold = split.cold_items()
    requests = build_requests(run, cold)
    editable = np.unique(requests.items)  # cold items the knowledge source has something to say about
    order = np.random.default_rng(1).permutation(editable)
    per_round = min(per_round, len(order) // n_rounds)
    rounds = [np.sort(order[r * per_round : (r + 1) * per_round]) for r in range(n_rounds)]
    cases = cases_with_items(run, cfg["eval_cases"], np.concatenate(rounds), warm=int(cfg.get("warm_cases", 0)))
    base, _, base_res = evaluate_detailed(run, cases, groups={"round 1": rounds[0],
                                                              "all rounds": np.concatenate(rounds)})
    base_warm = base_res.per_case("ndcg@10", "warm")
    editor = make_editor(run)

    def edit_and_score(items: np.ndarray, previous, groups: dict[str, np.ndarray]) -> tuple[object, dict]:
        """Edit ``items`` on top of ``previous``; its timings, efficacy, metrics and the warm drop with its CI."""
        with measure() as m:
            artifact, report = editor.edit(requests.subset(np.flatnonzero(np.isin(requests.items, items))), codes,
                                           split.item_ids, previous=previous)
        metrics, eval_s, result = evaluate_detailed(
            run, cases, artifact.schedule(run.config.eval.trigger, run.recommender.device), groups)
        return artifact, {"n_items": report.n_items, "n_requests": report.n_requests,
                          "update_seconds": report.timings_s["update_total"], "peak_rss_mb": m.peak_rss_mb,
                          "efficacy": report.efficacy, "metrics": metrics, "warm_ndcg10_drop": warm_drop(base, metrics),
                          "warm_ndcg10_drop_ci95": drop_with_ci(result.per_case("ndcg@10", "warm"), base_warm)["ci95"],
                          "eval_seconds": eval_s}

    def row(label, n_items: int, res: dict, this_round: float | None) -> list:
        metrics, (lo, hi) = res["metrics"], res["warm_ndcg10_drop_ci95"]
        return [label, n_items, res["update_seconds"], metrics["warm"]["ndcg@10"], res["warm_ndcg10_drop"],
                f"[{lo:.3f}, {hi:.3f}]", metrics["cold so far"]["recall@10"], metrics["cold so far"]["ndcg@10"],
                metrics["round 1"]["recall@10"], this_round]

    artifact, results, rows = None, [], []
    for r, items in enumerate(rounds):
        so_far = np.concatenate(rounds[: r + 1])
        artifact, res = edit_and_score(items, artifact, {"cold so far": so_far, "round 1": rounds[0],
                                                          "this round": items})
        results.append({"round": r + 1, **res})
        rows.append(row(r + 1, len(so_far), res, res["metrics"]["this round"]["recall@10"]))
        print(f"[{NAME}] round {r + 1}: update {res['update_seconds']:.1f} s, warm drop {res['warm_ndcg10_drop']:.4f} "
              f"{rows[-1][5]}, cold so far R@10 {res['metrics']['cold so far']['recall@10']:.4f}", flush=True)
    # the same items in one batch: what the rounds cost against editing everything at once
    everything = np.concatenate(rounds)
    _, once = edit_and_score(everything, None, {"cold so far": everything, "round 1": rounds[0],
                                                "this round": everything})
    rows.insert(0, [0, 0, None, base["warm"]["ndcg@10"], None, None, base["all rounds"]["recall@10"],
                    base["all rounds"]["ndcg@10"], base["round 1"]["recall@10"], None])
    rows.append(row("all at once", len(everything), once, None))
    table = md_table(["round", "items so far", "update s", "warm N@10", "warm N@10 drop", "drop 95 % CI",
                      "cold-so-far R@10", "cold-so-far N@10", "round-1 items R@10", "this round R@10"], rows)
    knowledge = run.config.knowledge
    table += (f"\nBase {cfg['base']['run_dir']}; {n_rounds} rounds × {per_round} items drawn from the "
              f"{len(editable):,} of {len(cold):,} cold items with {knowledge.source} knowledge "
              f"({len(requests):,} requests); {len(cases):,} test cases ({cfg['eval_cases']} sampled + cases of the "
              f"rounds' items + {cfg.get('warm_cases', 0)} more warm; {base['warm']['n_cases']:,} warm). Edit: "
              f"λ {run.config.edit.lam}, λ scale {run.config.edit.lam_scale}, positions {run.config.edit.positions}, "
              f"trigger {run.config.eval.trigger}. Row 0 is the unedited model (its cold-so-far column covers all "
              "rounds' items); the last row edits all rounds' items in one batch instead. Drop CI: paired bootstrap "
              "over warm cases. Goal: warm drop ≤ 5 % after 10 rounds, "
              "earlier rounds' items still recommended.\n")
    write_result(out_dir, NAME, {"size": args.size, "config": cfg, "hardware": hw, "base_metrics": base,
                                 "editable_items": int(len(editable)), "cold_items": int(len(cold)),
                                 "rounds": results, "all_at_once": once}, table, f"Sequential edits ({args.size})")
    print(table)


if __name__ == "__main__":
    main()
