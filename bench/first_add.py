"""The first add of a freshly started service on a run whose C0 is not cached yet: computed by the add itself
against computed at start on the edit worker (``ServiceConfig.warm_c0``), each on its own empty cache dir, one
after the other in one process.

Per setting: seconds from opening to the service answering, the warm-up's seconds (C0 at every site the first batch
can edit), and the first add's edit and total seconds with its ``c0_cached`` flag; then a second add. New items are
editions of catalog items (as ``serve_load.py`` makes them).

    python bench/first_add.py --model runs/demo --batch-size 10 --out runs/bench/first_add
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from genrecedit.atomic import write_json
from genrecedit.serving import LiveService, NewItem, ServiceConfig

NAME = "first_add"


def items(texts: list[str], start: int, n: int) -> list[NewItem]:
    return [NewItem(f"first-add-{j}", f"{texts[(j * 7919) % len(texts)]} (new edition {j})")
            for j in range(start, start + n)]


def one(model: Path, warm: bool, batch_size: int, overrides: list[str], tmp: Path) -> dict:
    cfg = ServiceConfig(state_dir=tmp / f"state-{warm}", exposure_cases=0, insecure_no_auth=True, warm_c0=warm)
    run_overrides = overrides + [f"cache_dir={tmp / f'cache-{warm}'}"]  # nothing cached: a run's first start
    t0 = time.perf_counter()
    service = LiveService.open(model, cfg, run_overrides)
    open_s = time.perf_counter() - t0
    texts = service.run.prepared.dataset.items["text"].tolist()
    try:
        warm_s = None
        if service.warm_up is not None:
            t0 = time.perf_counter()
            service.warm_up.result()
            warm_s = time.perf_counter() - t0 + 0.0
        adds = []
        for k in range(2):
            t0 = time.perf_counter()
            out = service.add_items(items(texts, k * batch_size, batch_size))
            adds.append({"seconds": time.perf_counter() - t0, "edit_seconds": out["timings_s"].get("edit"),
                         "c0_cached": out["c0_cached"]})
    finally:
        service.close()
    return {"warm_c0": warm, "open_seconds": open_s, "warm_up_seconds_after_open": warm_s, "adds": adds}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="trained run directory")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/first_add"))
    parser.add_argument("--override", "-o", action="append", default=[], help="run config override")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="first-add-") as tmp:
        rows = [one(args.model, warm, args.batch_size, args.override, Path(tmp)) for warm in (False, True)]
    data = {"model": str(args.model), "batch_size": args.batch_size, "settings": rows}
    write_json(args.out / f"{NAME}.json", data)
    print(json.dumps(data, indent=2))
    return data


if __name__ == "__main__":
    main()
