"""Exposure through the live service: how many lists the new items enter when the service serves the run's adopted
calibrated insertion, with the added items' text edits firing or not (``ServiceConfig.text_edits``), or serves the run
without it, each with the service's exposure cap or without it.

The run needs an adopted insertion (`genrecedit coldstart --adopt`; `make demo` adopts one). ``--items`` cold items
that first occur in the test period (``service_rounds.arriving_items``) are added from their text under new ids
(``<item id>~new``; the catalog keeps the originals, new items too). Then the test cases' histories (the first
``--max-cases`` in time order) are served through the service's own decoding path, micro-batched as ``/recommend``
requests are, once with the service's cap and once with it off; all of it three times: in a service whose text edits
fire, in one where they stay stored (the default with an insertion), and in one serving the run without its insertion
(``-o insertion=null``: the text edits fire and the run's content prior mixes the new items in, as for a run that
adopted none). Per setting: the new items' share of top-10 slots,
the largest share of lists one new item enters (all new items, and the added ones), how many added items reach no
list, the entries the cap blocked, and the hit rate@10 of the cases' next items. No response of a user is read to
serve; the targets only score.

    PYTHONPATH=bench python bench/service_exposure.py --model runs/demo --items 12 --out runs/bench/service_exposure
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from common import hardware, md_table, write_result
from genrecedit.coldstart.exposure import ExposureCap, exposure
from genrecedit.evaluation.bootstrap import paired_bootstrap_diff
from genrecedit.serving import LiveService, NewItem, ServiceConfig
from service_rounds import SUFFIX, arriving_items, base_text

NAME = "service_exposure"
K = 10


def served_lists(service: LiveService, histories: np.ndarray, cap: ExposureCap | None) -> np.ndarray:
    """[n, K] catalog indices (-1: empty) the service serves for ``histories`` [n, L] in row order, through
    ``cap`` (None: uncapped)."""
    service.batcher.cap = cap
    snap = service.snapshot
    out = np.full((len(histories), K), -1, np.int64)
    for row, ranked in enumerate(service._ranked(snap, histories, K)):
        out[row, :len(ranked.items)] = ranked.items
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="run directory with an adopted insertion")
    parser.add_argument("--items", type=int, default=12, help="new items added from their text")
    parser.add_argument("--max-cases", type=int, default=10_000, help="test histories served, in time order")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/service_exposure"))
    parser.add_argument("--override", "-o", action="append", default=[], help="run config override")
    args = parser.parse_args(argv)
    settings, add_s, hits = {}, {}, {}
    variants = (("text edits fire", True, []), ("insertion only (default)", False, []),
                ("no insertion: text edits and the run's prior", None, ["insertion=null"]))
    for label, text_edits, extra in variants:
        with tempfile.TemporaryDirectory(prefix="service-exposure-") as tmp:
            cfg = ServiceConfig(state_dir=Path(tmp) / "state", exposure_cases=0, insecure_no_auth=True,
                                text_edits=text_edits)
            service = LiveService.open(args.model, cfg, args.override + extra)
            service.embedding_cache = Path(tmp) / "embeddings"
            try:
                if not extra and (service.insertion is None or service.cap is None):
                    raise SystemExit(f"{args.model}: no adopted insertion with an exposure cap (run `genrecedit "
                                     "coldstart --adopt` first)")
                split = service.run.prepared.split
                picked = arriving_items(split)[:args.items]
                t0 = time.perf_counter()
                service.add_items([NewItem(split.item_ids[i] + SUFFIX, base_text(service, i)) for i in picked])
                add_s[label] = time.perf_counter() - t0
                catalog = service.snapshot.catalog
                added = np.array([catalog.index[split.item_ids[i] + SUFFIX] for i in picked])
                new = np.flatnonzero(~catalog.warm)
                test = split.test
                rows = np.argsort(test.timestamps, kind="stable")[:args.max_cases]
                histories = catalog.histories([[split.item_ids[i] for i in h if i >= 0]
                                               for h in test.histories[rows]], service.max_history)
                share = service.cap.share
                for capped, cap in (("uncapped", None), ("exposure cap", ExposureCap(share))):
                    name = f"{label}, {capped}"
                    t0 = time.perf_counter()
                    lists = served_lists(service, histories, cap)
                    seconds = time.perf_counter() - t0
                    every, mine = exposure(lists, new, K), exposure(lists, added, K)
                    settings[name] = {
                        "seconds": seconds, "new_item_slot_share": every["new_item_slot_share"],
                        "max_item_share": every["max_item_share"], "max_item": None if every["max_item"] is None
                        else catalog.item_ids[every["max_item"]],
                        "added_max_item_share": mine["max_item_share"], "added_unreached": mine["unreached_items"],
                        "added_slot_share": mine["new_item_slot_share"],
                        "hit_rate@10": float((lists == test.targets[rows][:, None]).any(1).mean()),
                        "cap": None if cap is None else cap.state()}
                    hits[name] = (lists == test.targets[rows][:, None]).any(1).astype(np.float64)
                    print(json.dumps({name: settings[name]}))
            finally:
                service.close()
    ref = "insertion only (default), exposure cap"  # every setting against the default, paired over the cases
    for name, setting in settings.items():
        setting["hit_rate@10_minus_default"] = list(paired_bootstrap_diff(hits[name], hits[ref]))
        if name.endswith(", exposure cap"):  # the cap against the same service uncapped
            plain = name.removesuffix(", exposure cap") + ", uncapped"
            setting["hit_rate@10_minus_uncapped"] = list(paired_bootstrap_diff(hits[name], hits[plain]))
    data = {"model": str(args.model), "items": int(len(picked)), "cases": int(len(rows)), "add_seconds": add_s,
            "cap_share": share, "settings": settings, "hardware": hardware()}
    table = md_table(["setting", "new-item slots", "max item share (all new)", "max item share (added)",
                      "added items unreached", "entries blocked", "hit rate@10", "against the default [95 %]",
                      "cap against uncapped [95 %]"],
                     [[name, s["new_item_slot_share"], s["max_item_share"], s["added_max_item_share"],
                       s["added_unreached"], None if s["cap"] is None else s["cap"]["blocked"], s["hit_rate@10"],
                       "{:+.4f} [{:+.4f}, {:+.4f}]".format(*s["hit_rate@10_minus_default"]),
                       "{:+.4f} [{:+.4f}, {:+.4f}]".format(*s["hit_rate@10_minus_uncapped"])
                       if "hit_rate@10_minus_uncapped" in s else "–"]
                      for name, s in settings.items()])
    write_result(args.out, NAME, data, table, f"Exposure through the service ({args.model}, {len(picked)} items "
                                              f"added, {len(rows)} test histories)")
    print(table)
    return data


if __name__ == "__main__":
    main()
