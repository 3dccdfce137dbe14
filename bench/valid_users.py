"""Should text-only selection read the validation cases of the users the split leaves out (``coldstart
--valid-users all``)? A forward check inside validation, so no test case is read: the latest ``--check`` share (by
time) of the split's own validation cases is held out; selection (``select_coldstart``: the prior, the insertion with
its own forward check, the baselines) runs on the earlier cases, either the split's own only (``test``) or with the
left-out users' cases before the same cut (``all``); each pick is scored on the held-out cases as it would be
served (the insertion through its exposure cap, in time order).

    PYTHONPATH=bench python bench/valid_users.py --run runs/beauty-time [--check 0.25] [--out runs/bench]

Per variant and recipe (the insertion, the prior): the cases selection read, the pick, and on the held-out cases the
warm NDCG@10 change with its paired 95 % interval against the beams, cold Recall@10, overall NDCG@10 and exposure.
Writes ``<out>/valid_users.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import drop_with_ci, exposure_fields, hardware, md_table, write_result
from genrecedit.coldstart.insertion import CalibratedInsertion, propose
from genrecedit.coldstart.prior import PriorConfig
from genrecedit.data.dataset import CaseSet
from genrecedit.data.protocols import unseen_user_valid
from genrecedit.runs.backbone import load_run
from genrecedit.runs.coldstart import (ColdstartSpec, decode, latest, make_prior, new_items, score_valid,
                                       select_coldstart, selection_cases)

NAME = "valid_users"


def scored(run, topk: np.ndarray, cases: CaseSet, base, new: np.ndarray) -> dict:
    res = score_valid(run, topk, cases)
    s = res.summary()
    warm = drop_with_ci(res.per_case("ndcg@10", "warm"), base.per_case("ndcg@10", "warm"))
    change = [None if d is None else -d for d in (warm["drop"], warm["ci95"][1], warm["ci95"][0])]
    return {"overall_ndcg@10": s["overall"]["ndcg@10"], "warm_change": change,
            "cold_recall@10": s["cold"]["recall@10"], **exposure_fields(topk, new)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--check", type=float, default=0.25, help="the latest share of the split's validation held out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    run = load_run(args.run, [f"threads={args.threads}"])
    own = selection_cases(run, None, whole=True)
    held = latest(own.timestamps, args.check)
    cut = own.timestamps[held].min()
    fit, check = own.subset(~held), own.subset(held)
    extra = unseen_user_valid(run.prepared.dataset, run.prepared.split, run.config.split)
    extra = extra.subset(np.flatnonzero(extra.timestamps < cut))
    new = new_items(run)
    beams = decode(run, check, None, False)
    items = beams.items.numpy()
    base = score_valid(run, items, check)
    order = np.argsort(check.timestamps, kind="stable")
    out, rows = {"run": str(args.run), "check": args.check, "n_held": len(check), "variants": {}}, []
    out["base"] = scored(run, items, check, base, new)
    for variant, cases in (("test", fit), ("all", fit.concat(extra))):
        t0 = time.perf_counter()
        sel = select_coldstart(run, ColdstartSpec(), progress=False, cases=cases)
        row = {"n_cases": len(cases), "seconds": time.perf_counter() - t0}
        ins = (sel["insertion"] or {}).get("chosen")
        if ins is not None:
            fitted = CalibratedInsertion.of(ins)
            props = propose(run.prepared.embeddings, run.prepared.codes, new, check.histories, beams,
                            fitted.cfg.recent, fitted.cfg.candidates)
            topk = fitted.rank(props, items.shape[1], cap=fitted.cfg.exposure_cap(), new_items=new, order=order)[0]
            row["insertion"] = {"pick": ins["config"], **scored(run, topk, check, base, new)}
        if sel["chosen"] is not None:
            topk = make_prior(run, PriorConfig.of(sel["chosen"])).apply(check.histories, beams).items.numpy()
            row["prior"] = {"pick": sel["chosen"], **scored(run, topk, check, base, new)}
        out["variants"][variant] = row
        for recipe in ("insertion", "prior"):
            r = row.get(recipe)
            if r is None:
                rows.append([variant, recipe, row["n_cases"], "none within the bounds", None, None, None, None])
                continue
            pick = (f"margin {r['pick']['bias']}, recent {r['pick']['recent']}, rerank {r['pick']['rerank']}, "
                    f"counts {r['pick']['popularity']}") if recipe == "insertion" else "stratified"
            w = r["warm_change"]
            rows.append([variant, recipe, row["n_cases"], pick, r["overall_ndcg@10"],
                         f"{100 * w[0]:+.1f} % [{100 * w[1]:+.1f}, {100 * w[2]:+.1f}]", r["cold_recall@10"],
                         f"{100 * r['max_item_share']:.1f} %"])
        print(rows[-2:], flush=True)
    out["hardware"] = hardware()
    table = md_table(["selection reads", "recipe", "cases", "pick", "held-out overall N@10",
                      "held-out warm N@10 change", "held-out cold R@10", "max item share"], rows)
    table += (f"\nHeld out: the latest {args.check:.0%} of the split's validation cases ({len(check):,}); beams: "
              f"overall N@10 {out['base']['overall_ndcg@10']:.4f}.\n")
    write_result(args.out, NAME, out, table, f"Selection with and without the left-out users' cases ({args.run})")
    print(table)


if __name__ == "__main__":
    main()
