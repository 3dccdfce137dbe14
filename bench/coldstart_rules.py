"""Does a selection rule for the text-only recipes keep its warm bound when the request mix shifts? Checked inside
validation, so no test number is read: the prior's grid and the calibrated insertion are selected on the
validation period's first ``--early`` share (by time) and the chosen settings are scored on the rest, where more
histories end with a new item (the mix moves the same way from validation to test).

    PYTHONPATH=bench python bench/coldstart_rules.py --run runs/game [--early 0.5] [--out bench/results]

Rules, all from the same grid pass (``genrecedit.runs.coldstart``): ``stratified`` (one setting per kind of
history, each within the bounds on its own cases), ``one setting, planned mix`` (the latest 20 % of the early
window's mix) and one setting held at a planned share of histories ending with a new item: the early window's own,
its latest 20 %'s, its straight-line trend at the middle of a next period as long (``WarmPlan.of(..., trend=True)``),
or the worst case (both strata within the bound); ``allocated`` (a setting per kind of history, the bound held for
both together at the latest 20 %'s or the trend's mix, ``allocate_strata``); the bound at the upper end of the
drop's 95 % interval or at the estimate; and the calibrated insertion (its margin chosen on the early window's
cross-fitted lists, the bound held at the trend's mix, upper end). Per rule on the later window: warm NDCG@10
drop, cold recall@10, overall NDCG@10, exposure, and the share of histories ending with a new item in both windows.
Writes ``<out>/coldstart_rules.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from common import exposure_fields, hardware, md_table, write_result
from genrecedit.coldstart.insertion import CalibratedInsertion
from genrecedit.coldstart.prior import PriorConfig
from genrecedit.runs.backbone import load_run
from genrecedit.runs.coldstart import ColdstartSpec, decode, make_prior, new_items, select_coldstart, selection_cases
from genrecedit.runs.coldstart_bounds import (CUT, WarmPlan, _admissible, _best, allocate_strata, choose_strata,
                                              strata_masks)
from genrecedit.runs.evaluate import score_topk

NAME = "coldstart_rules"


def later_scores(run, cases, prior: dict | None, beams, base, insertion: dict | None = None) -> dict:
    """The chosen prior or fitted calibrated insertion (neither: the beams) scored on ``cases``: warm drop, cold
    recall, overall NDCG, exposure."""
    new = new_items(run)
    if insertion is not None:
        topk = CalibratedInsertion.of(insertion).apply(run.prepared.embeddings, run.prepared.codes, new,
                                                       cases.histories, beams).items.numpy()
    elif prior is None:
        topk = beams.items.numpy()
    else:
        topk = make_prior(run, PriorConfig.of(prior)).apply(cases.histories, beams).items.numpy()
    res = score_topk(run, topk, cases).summary()
    b = base.summary()
    return {"overall_ndcg@10": res["overall"][f"ndcg@{CUT}"],
            "warm_drop": 1 - res["warm"][f"ndcg@{CUT}"] / b["warm"][f"ndcg@{CUT}"],
            "cold_recall@10": res["cold"][f"recall@{CUT}"], **exposure_fields(topk, new, CUT)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--early", type=float, default=0.5, help="share of the validation period (by time) to select on")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--allocated-bounds", default="0.025,0.02,0.015",
                    help="also the allocated rule (trend, upper end) planned within these tighter warm bounds")
    args = ap.parse_args()
    run = load_run(args.run, [f"threads={args.threads}"])
    spec = ColdstartSpec(bounds=dataclasses.replace(ColdstartSpec().bounds, allocate=True))
    cases = selection_cases(run, None, whole=True)
    cut = np.quantile(cases.timestamps, args.early)
    early, later = cases.subset(cases.timestamps < cut), cases.subset(cases.timestamps >= cut)
    t0 = time.perf_counter()
    selection = select_coldstart(run, spec, cases=early)
    select_s = time.perf_counter() - t0
    cells = selection["cells"]
    base_ndcg = selection["base"]["overall"][f"ndcg@{CUT}"]
    point = dataclasses.replace(spec.bounds, upper=False)
    bound, share_bound = spec.bounds.max_warm_drop, spec.bounds.max_item_share
    warm_early = ~run.prepared.split.is_cold(early)
    plans = {"early mix": float(strata_masks(early.histories, new_items(run))["novel"][warm_early].mean()),
             "latest 20 %": WarmPlan.of(early, new_items(run), ~warm_early, 0.2).share,
             "trend": WarmPlan.of(early, new_items(run), ~warm_early, 0.2, trend=True).share,
             "worst case": 1.0}

    def drop_at(cell: dict, q: float) -> float:
        """The cell's warm drop (estimate) with the novel stratum at share q of warm cases ("worst case": the
        larger of the two strata's drops)."""
        st = cell["strata"]
        if q >= 1.0:
            return max(st[n]["warm_drop"] for n in st)
        r, n = st["rest"], st.get("novel")
        if n is None or n["base_warm_ndcg"] is None:
            return r["warm_drop"]
        num = (1 - q) * r["warm_ndcg"] + q * n["warm_ndcg"]
        den = (1 - q) * r["base_warm_ndcg"] + q * n["base_warm_ndcg"]
        return 1 - num / den

    def one_setting(admissible) -> dict | None:
        ok = [c for c in cells if admissible(c) and c["metrics"]["exposure"]["max_item_share"] <= share_bound
              and c["metrics"]["overall"][f"ndcg@{CUT}"] > base_ndcg]
        return (_best(ok) or {}).get("prior")

    rules = {"stratified, upper end": choose_strata(cells, spec.bounds),
             "stratified, estimate": choose_strata(cells, point),
             "one setting, latest 20 %, upper end": one_setting(lambda c: _admissible(c["metrics"], spec.bounds))}
    for plan in ("latest 20 %", "trend"):
        q = plans[plan]
        rules[f"allocated, {plan} ({100 * q:.1f} %), upper end"] = allocate_strata(cells, spec.bounds, q)
        rules[f"allocated, {plan} ({100 * q:.1f} %), estimate"] = allocate_strata(cells, point, q)
    for tighter in (float(b) for b in args.allocated_bounds.split(",") if b.strip()):
        rules[f"allocated, trend, upper end, planned ≤ {100 * tighter:.1f} %"] = allocate_strata(
            cells, dataclasses.replace(spec.bounds, max_warm_drop=tighter), plans["trend"])
    for plan, q in plans.items():
        rules[f"one setting, {plan} ({100 * q:.1f} %), estimate"] = one_setting(
            lambda c, q=q: drop_at(c, q) <= bound)
    beams = decode(run, later, None, "later window beams")
    base = score_topk(run, beams.items.numpy(), later)
    new = new_items(run)
    warm_later = ~run.prepared.split.is_cold(later)
    shares = {"early": float(strata_masks(early.histories, new)["novel"].mean()),
              "later": float(strata_masks(later.histories, new)["novel"].mean()),
              "early_warm": plans["early mix"], "later_warm": float(strata_masks(later.histories, new)["novel"][
                  warm_later].mean()), "plans": plans}
    results = {name: {"prior": prior, "later": later_scores(run, later, prior, beams, base)}
               for name, prior in rules.items()}
    fitted = selection["insertion"]["chosen"]
    q = selection["insertion"]["plan_share"]
    results[f"calibrated insertion, trend ({100 * q:.1f} %), upper end"] = {
        "insertion": None if fitted is None else fitted["config"],
        "later": later_scores(run, later, None, beams, base, fitted)}
    rows = [[name, f"{100 * r['later']['warm_drop']:.1f} %", f"{r['later']['cold_recall@10']:.4f}",
             f"{r['later']['overall_ndcg@10']:.4f}", f"{100 * r['later']['new_item_slot_share']:.1f} %",
             f"{100 * r['later']['max_item_share']:.1f} %"] for name, r in results.items()]
    table = md_table(["rule (selected on the early window)", "later warm drop", "later cold R@10",
                      "later overall N@10", "new slots", "max item"], rows)
    write_result(args.out, NAME, {"run": str(args.run), "early": args.early, "n_early": len(early),
                                  "n_later": len(later), "novel_share": shares, "select_seconds": select_s,
                                  "base_later_overall_ndcg@10": base.summary()["overall"][f"ndcg@{CUT}"],
                                  "rules": results, "hardware": hardware()}, table,
                 "Text-only selection rules: selected on early validation, scored on later validation")
    print(f"warm histories ending with a new item: early {100 * shares['early_warm']:.1f} %, later "
          f"{100 * shares['later_warm']:.1f} %\n{table}")


if __name__ == "__main__":
    main()
