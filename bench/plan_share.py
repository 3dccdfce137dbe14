"""Does the warm bound's planned mix foresee the next period? The share of warm cases whose history ends with a new
item, read as ``WarmPlan.of(..., trend=True)`` reads it, checked inside validation (no model, no decoding).

    PYTHONPATH=bench python bench/plan_share.py -c game [-o split.protocol=time] [--test]

The line fitted on the first half of the validation period (by time), read where ``trend_share`` reads it, and the
latest fifth's share, against the share the second half has; then both over all of validation. The insertion's
plan is the larger of the two (``WarmPlan.of``), so both columns are shown. ``--test`` also
prints test's share: to understand a gap, never to choose a plan from (the plan would then be chosen on test).
Writes ``<out>/plan_share.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import hardware, md_table, write_result
from genrecedit.config import load_config
from genrecedit.data.dataset import CaseSet, ends_with
from genrecedit.data.protocols import make_split
from genrecedit.data.readers import load_dataset
from genrecedit.runs.coldstart_bounds import trend_share

NAME = "plan_share"
LATEST = 0.2  # the latest window the non-trend plan reads (Bounds.plan_window's default)


def warm_novel(cases: CaseSet, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The warm cases' times and whether their history ends with a new item, in time order."""
    warm = ~np.isin(cases.targets, new)
    times, novel = cases.timestamps[warm], ends_with(cases.histories, new)[warm]
    order = np.argsort(times, kind="stable")
    return times[order], novel[order]


def latest(novel: np.ndarray) -> float:
    return float(novel[int((1 - LATEST) * len(novel)):].mean()) if len(novel) else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("-o", "--override", action="append", default=[])
    ap.add_argument("--test", action="store_true", help="also print test's share (understanding only)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    cfg = load_config(args.config, args.override)
    data = load_dataset(cfg.dataset, Path(cfg.data_root) if cfg.data_root else None, Path(cfg.cache_dir))
    split = make_split(data, cfg.split)
    new = np.flatnonzero(~split.warm)
    times, novel = warm_novel(split.valid, new)
    half = len(times) // 2
    result = {"config": args.config, "overrides": args.override, "n_warm_valid": len(times),
              "valid_share": float(novel.mean()) if len(novel) else 0.0,
              "first_half": {"share": float(novel[:half].mean()), "trend": trend_share(times[:half], novel[:half]),
                             "latest": latest(novel[:half])},
              "second_half_share": float(novel[half:].mean()),
              "plan": {"trend": trend_share(times, novel), "latest": latest(novel)}, "hardware": hardware()}
    rows = [["first half → second half", result["first_half"]["trend"], result["first_half"]["latest"],
             result["second_half_share"]],
            ["validation → next period", result["plan"]["trend"], result["plan"]["latest"], None]]
    if args.test:
        result["test_share"] = float(warm_novel(split.test, new)[1].mean())
        rows[1][3] = result["test_share"]
    table = md_table(["planned from", "trend", f"latest {LATEST:.0%}", "share there"], rows)
    write_result(args.out, NAME, result, table, f"Planned share of histories ending with a new item ({args.config})")
    print(table)


if __name__ == "__main__":
    main()
