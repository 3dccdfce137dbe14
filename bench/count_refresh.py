"""Should a fitted insertion be served with the interaction counts known by its last validation case, or with
training's? A forward check inside validation, so no test case is read: the latest ``--check`` share (by time) of
the split's validation cases is held out; each cell of a coldstart selection whose warm model reads counts (the
chosen one and the forward check's picks) is fitted on the earlier cases with training's counts, as selection fits
it, then scored on the held-out cases as served (through its exposure cap, in time order) twice: with training's
counts (``training``) and with those known by the last earlier case (``refreshed``: the earlier cases' warm
targets added, the "lately" stretch moved to their end; what ``genrecedit coldstart`` ships). The re-ranked order
alone (no new item) is scored both ways too.

    PYTHONPATH=bench python bench/count_refresh.py --run runs/game [--selection runs/game/cs/coldstart_selection.json]
        [--check 0.25,0.5] [--out runs/bench]

Per check share and cell: held-out overall and warm NDCG@10, cold Recall@10 and max item share with either
counts, and the paired 95 % interval of refreshed − training on overall and warm NDCG@10. Writes
``<out>/count_refresh.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from common import exposure_fields, hardware, md_table, write_result
from genrecedit.coldstart.insertion import CalibratedInsertion, InsertionConfig, propose
from genrecedit.evaluation.bootstrap import paired_bootstrap_diff
from genrecedit.runs.backbone import load_run
from genrecedit.runs.coldstart import InsertionGrid, decode, item_counts, latest, new_items, score_valid, \
    selection_cases

NAME = "count_refresh"


def cells_of(selection: dict) -> list[dict]:
    """The insertion configs of a coldstart selection that read counts: the chosen one, then the forward check's
    picks, each once."""
    ins = selection.get("insertion") or {}
    configs = [(ins.get("chosen") or {}).get("config")]
    configs += [r["pick"] for r in (ins.get("rule_check") or {}).get("rules", [])]
    out = []
    for c in configs:
        if c is not None and c.get("popularity") and c not in out:
            out.append(c)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--selection", type=Path, help="a coldstart_selection.json (default: the run's)")
    ap.add_argument("--check", default="0.25,0.5", help="latest shares of validation held out, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    run = load_run(args.run, [f"threads={args.threads}"])
    selection = json.loads((args.selection or args.run / "coldstart_selection.json").read_text())
    cells = cells_of(selection)
    if not cells:
        raise SystemExit("the selection holds no insertion whose warm model reads counts: nothing to compare")
    recent = InsertionGrid().recent_counts
    own = selection_cases(run, None, whole=True)
    beams = decode(run, own, None, False)
    new, before = new_items(run), item_counts(run, recent)
    out = {"run": str(args.run), "selection": str(args.selection), "checks": {}}
    rows = []
    t0 = time.perf_counter()
    for share in (float(s) for s in args.check.split(",")):
        held = latest(own.timestamps, share)
        fit, check = own.subset(~held), own.subset(held)
        fit_beams, check_beams = beams.rows(~held), beams.rows(held)
        items = check_beams.items.numpy()
        base = score_valid(run, items, check)
        order = np.argsort(check.timestamps, kind="stable")
        after = item_counts(run, recent, float(fit.timestamps.max()))
        entry = {"n_fit": len(fit), "n_held": len(check), "days_training_end_to_cut": float(
            (check.timestamps.min() - run.prepared.split.train.timestamps.max()) / 86400), "cells": [], "scores": {}}
        fits, reranked = {}, {}  # per model (a cell but its margin): its fit; its re-ranked order's scores
        for config in cells:
            cfg = InsertionConfig(**config)
            key = json.dumps({**config, "bias": 0.0, "cap": None}, sort_keys=True)  # the margin and cap fit nothing
            if key not in fits:
                props = {name: propose(run.prepared.embeddings, run.prepared.codes, new, c.histories, b, cfg.recent,
                                       cfg.candidates) for name, c, b in (("fit", fit, fit_beams),
                                                                          ("held", check, check_beams))}
                fits[key] = props["held"], CalibratedInsertion.fit(props["fit"], fit.targets, cfg, before)
            held_props, fitted = fits[key]
            lists = (("insertion", None, True),) + (() if key in reranked else (("rerank_only", float("inf"), False),))
            scored, cells_out = {}, {}
            for counts_name, counts in (("training", before), ("refreshed", after)):
                model = replace(fitted, cfg=cfg, counts=counts)
                for what, bias, capped in lists:  # each list set served through a fresh cap of its own
                    cap = cfg.exposure_cap() if capped else None
                    topk = model.rank(held_props, items.shape[1], bias=bias, cap=cap, new_items=new, order=order)[0]
                    result = score_valid(run, topk, check)
                    s = result.summary()
                    scored[(counts_name, what)] = result
                    cells_out[f"{counts_name}/{what}"] = {
                        "overall_ndcg@10": s["overall"]["ndcg@10"], "warm_ndcg@10": s["warm"]["ndcg@10"],
                        "cold_recall@10": s["cold"]["recall@10"],
                        "max_item_share": exposure_fields(topk, new)["max_item_share"]}
            new_order = key not in reranked
            if new_order:
                reranked[key] = ({k: v for k, v in scored.items() if k[1] == "rerank_only"},
                                 {k: v for k, v in cells_out.items() if k.endswith("/rerank_only")})
            scored.update(reranked[key][0])
            cells_out.update(reranked[key][1])
            entry["scores"][json.dumps(config, sort_keys=True)] = cells_out
            diffs = {}
            for what in ("insertion", "rerank_only"):
                for part in ("overall", "warm"):
                    d = paired_bootstrap_diff(scored[("refreshed", what)].per_case("ndcg@10", part),
                                              scored[("training", what)].per_case("ndcg@10", part))
                    diffs[f"{what}/{part}"] = list(d)
            entry["cells"].append({"config": config, "refreshed_minus_training": diffs})
            n_rows = len(rows)
            for what in ("insertion",) + (("rerank_only",) if new_order else ()):  # one row per re-ranked order
                a, b = cells_out[f"training/{what}"], cells_out[f"refreshed/{what}"]
                o, w = diffs[f"{what}/overall"], diffs[f"{what}/warm"]
                rows.append([f"{share:.2f}", f"recent {cfg.recent}, margin {cfg.bias}", what.replace("_", " "),
                             f"{a['overall_ndcg@10']:.4f} → {b['overall_ndcg@10']:.4f}",
                             f"{o[0]:+.4f} [{o[1]:+.4f}, {o[2]:+.4f}]",
                             f"{a['warm_ndcg@10']:.4f} → {b['warm_ndcg@10']:.4f}",
                             f"{w[0]:+.4f} [{w[1]:+.4f}, {w[2]:+.4f}]",
                             f"{a['cold_recall@10']:.4f} → {b['cold_recall@10']:.4f}",
                             f"{100 * a['max_item_share']:.1f} → {100 * b['max_item_share']:.1f} %"])
            print(*rows[n_rows:], sep="\n", flush=True)
        out["checks"][f"{share}"] = entry
    out["seconds"] = time.perf_counter() - t0
    out["hardware"] = hardware()
    table = md_table(["held out", "cell", "lists", "overall N@10", "refreshed − training", "warm N@10",
                      "refreshed − training", "cold R@10", "max item share"], rows)
    table += ("\nEach cell fitted on the earlier validation cases with training's counts; held-out lists served "
              "with training's counts → the refreshed ones; paired 95 % intervals.\n")
    write_result(args.out, NAME, out, table, f"Serving counts refreshed to the fit's last case ({args.run})")
    print(table)


if __name__ == "__main__":
    main()
