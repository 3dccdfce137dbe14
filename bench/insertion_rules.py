"""Could the calibrated insertion's margin rule spend more of the warm bound and still keep it? Validation only (no
test case is read): each rule chooses on the validation period's first half (by time) and is scored on the second,
where more histories end with a new item.

    PYTHONPATH=bench python bench/insertion_rules.py --run runs/game [--out bench/results]

Rules (``genrecedit coldstart``'s insertion, recent 1, 10 proposals; margins 1 … 7 in steps of 0.25; every rule
also needs max item share ≤ 0.05 and overall NDCG@10 above the beams' on the first half's cross-fitted lists):

- ``upper end`` (shipped): the warm NDCG@10 drop at the trend's mix of histories ending with a new item, upper end
  of its 95 % bootstrap interval, ≤ 3 % (``WarmPlan.drop``);
- ``estimate``: the same drop's point estimate ≤ 3 %;
- ``model``: the drop the warm log-odds model expects, no label read: each beam item's calibrated probability of
  being the next item times the NDCG@10 gain it loses where a proposal pushes it down, over the base's expected
  gain, per stratum, mixed at the trend's mix with the strata's base warm NDCG as weights (cross-fitted models);
- ``per stratum``: one margin for histories ending with a new item and one for the rest, the pair with the best
  overall NDCG@10 whose mixed drop (both strata resampled, trend's mix) has its upper end ≤ 3 %.

Also on the whole period's cross-fitted lists, per margin: the measured warm drop next to the model's (is the
model's estimate calibrated?). Writes ``<out>/insertion_rules.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import hardware, md_table, write_result
from genrecedit.coldstart.insertion import CalibratedInsertion, InsertionConfig, Proposals, half_models, propose
from genrecedit.data.dataset import CaseSet
from genrecedit.evaluation.report import EvalResult
from genrecedit.runs.backbone import load_run
from genrecedit.runs.coldstart import decode, new_items, selection_cases
from genrecedit.runs.coldstart_bounds import CUT, WarmPlan, _row, strata_masks
from genrecedit.runs.evaluate import score_topk

NAME = "insertion_rules"
BIASES = tuple(float(b) for b in np.arange(1.0, 7.01, 0.25))
BOUND, SHARE_CAP, N_BOOT = 0.03, 0.05, 1000


def cross_fitted(props: Proposals, cases: CaseSet, width: int) -> tuple[dict[float, np.ndarray], np.ndarray]:
    """``coldstart.insertion.cross_fitted``'s lists, plus [n, K] each beam item's probability of being the next item
    under the held-out half's warm model (``half_models``: the same models)."""
    lists = {b: np.full((len(cases), width), -1, np.int64) for b in BIASES}
    prob = np.zeros(props.beam_items.shape)
    cfg = InsertionConfig(candidates=props.items.shape[1], width=width)
    for held, model in half_models(props, cases.targets, cases.timestamps, cfg):
        part = props.rows(held)
        for b in BIASES:
            lists[b][held] = model.rank(part, width, b)[0]
        prob[held] = np.where(part.beam_items >= 0, 1 / (1 + np.exp(-model.warm_odds(part.beam_features))), 0.0)
    return lists, prob


def expected_gain(prob: np.ndarray, beam_items: np.ndarray, topk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per case the base list's expected NDCG@10 gain and what the list ``topk`` loses of it, under ``prob``."""
    width = beam_items.shape[1]
    gain = np.zeros(width + 2)
    gain[1:CUT + 1] = 1 / np.log2(np.arange(2, CUT + 2))
    same = (beam_items[:, :, None] == topk[:, None, :CUT]) & (beam_items[:, :, None] >= 0)
    new_rank = np.where(same.any(2), same.argmax(2) + 1, width + 1)
    base = gain[1:width + 1][None]
    return (prob * base).sum(1), (prob * (base - gain[new_rank])).sum(1)


def cells(run, cases: CaseSet, props: Proposals, base: EvalResult, new: np.ndarray, width: int,
          rng: np.random.Generator) -> tuple[list[dict], float]:
    """Per margin on ``cases``' cross-fitted lists: the metrics, the planned drop (estimate, upper end), the model's
    planned drop, and per stratum the bootstrap draws of warm NDCG lost and of the base's (for ``per stratum``)."""
    plan = WarmPlan.of(cases, new, base.cold_mask, 0.2, trend=True)
    novel = strata_masks(cases.histories, new)["novel"]
    warm = ~base.cold_mask
    b = base.per_case(f"ndcg@{CUT}", "overall")
    masks = {"rest": ~novel, "novel": novel}
    bw = {s: b[m & warm].mean() if (m & warm).any() else 0.0 for s, m in masks.items()}
    weight = plan.share * bw["novel"] / max((1 - plan.share) * bw["rest"] + plan.share * bw["novel"], 1e-12)
    draws = {s: rng.integers(0, max((m & warm).sum(), 1), (N_BOOT, (m & warm).sum())) for s, m in masks.items()}
    lists, prob = cross_fitted(props, cases, width)
    out = []
    for bias, topk in lists.items():
        res = score_topk(run, topk, cases)
        row = _row(res, topk, new, base)
        a = res.per_case(f"ndcg@{CUT}", "overall")
        hit = res.per_case(f"recall@{CUT}", "overall")
        eb, el = expected_gain(prob, props.beam_items, topk)
        model = {s: el[m].sum() / max(eb[m].sum(), 1e-12) for s, m in masks.items()}
        strata = {}
        for s, m in masks.items():
            w = m & warm
            lost, kept = b[w] - a[w], b[w]
            strata[s] = {"ndcg_sum": float(a[m].sum()), "lost": lost[draws[s]].mean(1) if w.any() else np.zeros(N_BOOT),
                         "base": kept[draws[s]].mean(1) if w.any() else np.zeros(N_BOOT),
                         "warm_drop": float(lost.sum() / max(kept.sum(), 1e-12)),
                         "cold_hits": int(hit[m & ~warm].sum())}
        out.append({"bias": bias, "overall": row["overall"][f"ndcg@{CUT}"], "cold": row["cold"][f"recall@{CUT}"],
                    "warm_drop": row["warm_drop"], "max_item_share": row["exposure"]["max_item_share"],
                    "planned": plan.drop(res, base, below=1.0),
                    "model_planned": (1 - weight) * model["rest"] + weight * model["novel"],
                    "model_drop": float(el.sum() / max(eb.sum(), 1e-12)), "strata": strata})
    return out, plan.share


def choose(cs: list[dict], base_ndcg: float, rule: str, share: float) -> tuple[float, float] | None:
    """(margin for histories ending with a warm item, margin for those ending with a new one) the rule picks;
    ``share``: the planned share of histories ending with a new item (``per stratum``)."""
    ok = [c for c in cs if c["max_item_share"] <= SHARE_CAP and c["overall"] > base_ndcg]
    if rule != "per stratum":
        value = {"upper end": lambda c: c["planned"][1], "estimate": lambda c: c["planned"][0],
                 "model": lambda c: c["model_planned"]}[rule]
        best = max((c for c in ok if value(c) <= BOUND), key=lambda c: c["overall"], default=None)
        return None if best is None else (best["bias"], best["bias"])
    best, best_v = None, -np.inf
    for r in ok:
        for n in ok:
            rs, ns = r["strata"]["rest"], n["strata"]["novel"]
            drop = 1 - ((1 - share) * (rs["base"] - rs["lost"]) + share * (ns["base"] - ns["lost"])) / np.maximum(
                (1 - share) * rs["base"] + share * ns["base"], 1e-12)
            v = rs["ndcg_sum"] + ns["ndcg_sum"]
            if np.quantile(drop, 0.975) <= BOUND and v > best_v:
                best, best_v = (r["bias"], n["bias"]), v
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    run = load_run(args.run, [f"threads={args.threads}"])
    rng = np.random.default_rng(0)
    cases = selection_cases(run, None, whole=True)
    new = new_items(run)
    beams = decode(run, cases, None, "validation beams")
    items, width = beams.items.numpy(), beams.items.shape[1]
    props = propose(run.prepared.embeddings, run.prepared.codes, new, cases.histories, beams, 1, 10)
    base = score_topk(run, items, cases)
    whole, share = cells(run, cases, props, base, new, width, rng)
    early = cases.timestamps < np.median(cases.timestamps)
    E, L = cases.subset(early), cases.subset(~early)
    base_e, base_l = score_topk(run, items[early], E), score_topk(run, items[~early], L)
    cs, share_e = cells(run, E, props.rows(early), base_e, new, width, rng)
    novel_l = strata_masks(L.histories, new)["novel"]
    model = CalibratedInsertion.fit(props.rows(early), E.targets, InsertionConfig(candidates=10, width=width))
    rules = {}
    for rule in ("upper end", "estimate", "model", "per stratum"):
        pick = choose(cs, base_e.summary()["overall"][f"ndcg@{CUT}"], rule, share_e)
        if pick is None:
            rules[rule] = None
            continue
        rest, nov = (model.rank(props.rows(~early), width, b)[0] for b in pick)
        topk = np.where(novel_l[:, None], nov, rest)
        row = _row(score_topk(run, topk, L), topk, new, base_l)
        rules[rule] = {"margin_rest": pick[0], "margin_novel": pick[1],
                       "later_overall_ndcg@10": row["overall"][f"ndcg@{CUT}"], "later_warm_drop": row["warm_drop"],
                       "later_cold_recall@10": row["cold"][f"recall@{CUT}"],
                       "later_max_item_share": row["exposure"]["max_item_share"]}
        print(rule, rules[rule], flush=True)
    curve = [{k: c[k] for k in ("bias", "overall", "cold", "warm_drop", "model_drop", "model_planned")}
             | {"planned": c["planned"][0], "planned_upper": c["planned"][1],
                "warm_drop_rest": c["strata"]["rest"]["warm_drop"], "warm_drop_novel": c["strata"]["novel"]["warm_drop"],
                "cold_hits_rest": c["strata"]["rest"]["cold_hits"], "cold_hits_novel": c["strata"]["novel"]["cold_hits"]}
             for c in whole]
    table = md_table(["rule", "margin (last item warm / new)", "later overall N@10", "later warm drop",
                      "later cold R@10", "later max item share"],
                     [[r, None, None, None, None, None] if v is None else
                      [r, f"{v['margin_rest']} / {v['margin_novel']}", v["later_overall_ndcg@10"], v["later_warm_drop"],
                       v["later_cold_recall@10"], v["later_max_item_share"]] for r, v in rules.items()])
    table += f"\n\nbase on the later half: overall N@10 {base_l.summary()['overall'][f'ndcg@{CUT}']:.4f}\n\n"
    table += md_table(["margin", "warm drop", "model's drop", "planned drop", "upper end", "model's planned",
                       "cold R@10"],
                      [[f"{c['bias']:.2f}", c["warm_drop"], c["model_drop"], c["planned"], c["planned_upper"],
                        c["model_planned"], c["cold"]] for c in curve if 2.0 <= c["bias"] <= 5.0])
    write_result(args.out, NAME, {"run": str(args.run), "n_cases": len(cases), "planned_share": share,
                                  "planned_share_early": share_e, "rules": rules, "curve": curve,
                                  "hardware": hardware()},
                 table, f"Calibrated insertion: margin rules, first half → second half of validation ({args.run})")
    print(table)


if __name__ == "__main__":
    main()
