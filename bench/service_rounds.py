"""Daily rounds through the live service: each round adds a batch of new items from their text (``add_items``) and
re-edits the previous round's items from their first interactions (``add_feedback``), as a shop would run it; per
round the seconds of both calls, what the re-edit solved again, and the artifact's bytes; at the end a restart (the
whole stack restored from the registry) and the rollbacks of the newest feedback batch and the newest item batch.

The items are the cold items that first occur in the run's test period (``launch_calendar.first_seen``), in that
order, ``--items`` a round; each is added under a new id (``<item id>~new``, the run's catalog holds the original
unedited) with its own text, embedded afresh (the added items' embedding cache is a temp folder). Round r's feedback
is, for every item of round r − 1, its first test cases (target time order, at most
``knowledge.histories_per_item``, non-empty history): the history's item ids (the run's catalog) and the added item.
The exposure estimate is off (``exposure_cases`` 0): the timings are the edits'. The warm-up (the layer map located
on the run's own new items, ``ServiceConfig.probe_at_start``, and C0) runs at start and is awaited before round 1;
``--no-probe-at-start`` leaves the probe to round 1's add.

    PYTHONPATH=bench python bench/service_rounds.py --model runs/game --items 100 --rounds 5 \\
        --out runs/bench/service_rounds
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from common import hardware, md_table, write_result
from genrecedit.serving import Interaction, LiveService, NewItem, ServiceConfig
from genrecedit.serving.service import ARTIFACTS
from launch_calendar import first_seen

NAME = "service_rounds"
SUFFIX = "~new"


def stored_bytes(state_dir: Path, service: LiveService) -> int:
    """Bytes of the artifact version the registry points at (hard-linked batch files counted once each)."""
    rel = service.registry.artifact_dir()
    if rel is None:
        return 0
    return sum(p.stat().st_size for p in (state_dir / rel).rglob("*") if p.is_file())


def arriving_items(split) -> np.ndarray:
    """Cold items first seen in the test period, in the order of their first interaction (ties by index)."""
    first = first_seen(split)
    test_start = float(split.test.timestamps.min())
    cold = np.flatnonzero(~split.warm & np.isfinite(first) & (first >= test_start))
    return cold[np.lexsort((cold, first[cold]))]


def base_text(service: LiveService, item: int) -> str:
    return service.metadata.base(service.run.prepared.split.item_ids[item])["text"]


def first_interactions(split, item: int, per_item: int) -> list[list[str]]:
    """The item's first test cases with a non-empty history, as item-id histories (oldest first)."""
    test = split.test
    rows = np.flatnonzero(test.targets == item)
    rows = rows[np.argsort(test.timestamps[rows], kind="stable")]
    out = []
    for r in rows:
        history = [split.item_ids[i] for i in test.histories[r] if i >= 0]
        if history:
            out.append(history)
        if len(out) == per_item:
            break
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="trained run directory (a time split)")
    parser.add_argument("--items", type=int, default=100, help="new items a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/service_rounds"))
    parser.add_argument("--override", "-o", action="append", default=[], help="run config override")
    parser.add_argument("--no-probe-at-start", action="store_true",
                        help="the first add probes the layers on its own batch (ServiceConfig.probe_at_start off)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="service-rounds-") as tmp:
        state = Path(tmp) / "state"
        cfg = ServiceConfig(state_dir=state, exposure_cases=0, insecure_no_auth=True,
                            probe_at_start=not args.no_probe_at_start)
        t0 = time.perf_counter()
        service = LiveService.open(args.model, cfg, args.override)
        service.embedding_cache = Path(tmp) / "embeddings"  # every text embedded afresh, as a new item's is
        if service.warm_up is not None:
            service.warm_up.result()
        start_s = time.perf_counter() - t0
        split = service.run.prepared.split
        per_item = service.run.config.knowledge.histories_per_item
        order = arriving_items(split)
        need = args.items * args.rounds
        if len(order) < need:
            raise SystemExit(f"{len(order)} items arrive in the test period; {need} asked for")
        rounds, previous, last_feedback, last_add = [], [], None, None
        for r in range(args.rounds):
            batch = order[r * args.items:(r + 1) * args.items]
            row = {"round": r + 1, "items": len(batch)}
            if len(previous):
                interactions = [Interaction(split.item_ids[i] + SUFFIX, tuple(h)) for i in previous
                                for h in first_interactions(split, i, per_item)]
                t0 = time.perf_counter()
                fb = service.add_feedback(interactions)
                row.update(feedback_seconds=time.perf_counter() - t0, feedback_edit_seconds=fb["timings_s"]["edit"],
                           re_edited=len(fb["items"]), feedback_requests=fb["n_requests"],
                           solved_again=len(fb["solved_again"]), feedback_timings=fb["timings_s"])
                last_feedback = fb["batch_id"]
            t0 = time.perf_counter()
            added = service.add_items([NewItem(split.item_ids[i] + SUFFIX, base_text(service, i)) for i in batch])
            row.update(add_seconds=time.perf_counter() - t0, add_edit_seconds=added["timings_s"]["edit"],
                       add_requests=added["n_requests"], c0_cached=added["c0_cached"], add_timings=added["timings_s"],
                       layers=added["layers"])
            last_add = added["batch_id"]
            row["round_seconds"] = row["add_seconds"] + row.get("feedback_seconds", 0.0)
            row["artifact_bytes"] = stored_bytes(state, service)
            rounds.append(row)
            print(json.dumps(row))
            previous = batch
        service.close()
        t0 = time.perf_counter()
        service = LiveService.open(args.model, ServiceConfig(state_dir=state, exposure_cases=0, insecure_no_auth=True,
                                                             warm_c0=False), args.override)
        restore_s = time.perf_counter() - t0
        n_batches = len(service.snapshot.active_batches)
        t0 = time.perf_counter()
        fb_back = service.roll_back(last_feedback) if last_feedback else None
        fb_back_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        add_back = service.roll_back(last_add)
        add_back_s = time.perf_counter() - t0
        service.close()
    growth = np.diff([0] + [r["artifact_bytes"] for r in rounds])
    data = {"model": str(args.model), "items_per_round": args.items, "rounds": rounds, "start_seconds": start_s,
            "restart": {"seconds": restore_s, "active_batches": n_batches},
            "roll_back_newest_feedback": None if fb_back is None else {
                "seconds": fb_back_s, "recomputed": fb_back["recomputed"], "exact": fb_back["exact"]},
            "roll_back_newest_items": {"seconds": add_back_s, "exact": add_back["exact"]},
            "artifact_growth_bytes": growth.tolist(), "hardware": hardware()}
    table = md_table(["round", "items", "re-edited", "feedback requests", "solved again", "feedback s", "add s",
                      "round s", "artifact MB", "growth MB"],
                     [[r["round"], r["items"], r.get("re_edited", "–"), r.get("feedback_requests", "–"),
                       r.get("solved_again", "–"),
                       f"{r['feedback_seconds']:.2f}" if "feedback_seconds" in r else "–",
                       f"{r['add_seconds']:.2f}", f"{r['round_seconds']:.2f}", f"{r['artifact_bytes'] / 1e6:.2f}",
                       f"{g / 1e6:.2f}"] for r, g in zip(rounds, growth)])
    write_result(args.out, NAME, data, table, f"Daily rounds through the service ({args.items} items a round)")
    print(table)
    return data


if __name__ == "__main__":
    main()
