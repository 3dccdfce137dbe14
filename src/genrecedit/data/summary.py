"""What a split looks like, in numbers: a JSON-ready dict, its atomic save, and a terminal table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from genrecedit.data._io import write_atomic
from genrecedit.data.dataset import CaseSet, Split

COLD_CATEGORY_LABELS = {
    "new_in_time": "new in time (first seen at/after t1)",
    "filtered_out_users_only": "seen before t1, only by filtered-out users",
    "held_out": "held out (catalog launch)",
    "only_in_valid_or_test": "only as valid/test targets",
    "never_interacted": "in the item file, never interacted",
}


def _share(part: int, whole: int) -> float:
    return float(part / whole) if whole else 0.0


def _case_stats(split: Split, cases: CaseSet) -> dict[str, Any]:
    n = len(cases)
    cold = split.is_cold(cases)
    n_cold = int(cold.sum())
    n_empty = int((cases.history_lengths() == 0).sum())
    return {
        "cases": n,
        "warm": n - n_cold,
        "cold": n_cold,
        "cold_share": _share(n_cold, n),
        "empty_history": n_empty,
        "empty_history_share": _share(n_empty, n),
        "mean_history_length": float(cases.history_lengths().mean()) if n else 0.0,
        "cold_target_items": int(np.unique(cases.targets[cold]).size),
    }


def split_summary(split: Split) -> dict[str, Any]:
    """Plain-Python (JSON-ready) numbers of a split.

    Keys: dataset, protocol, max_history, users, items {catalog, warm, cold}, train / valid / test (cases, warm,
    cold, cold_share, empty_history(_share), mean_history_length, cold_target_items), cold_items (why items are
    cold, from ``split.info``), and, when present, cutoffs {t1, t2, t1_date, t2_date} and holdout numbers.
    """
    n_warm = int(split.warm.sum())
    out: dict[str, Any] = {
        "dataset": split.dataset,
        "protocol": split.protocol,
        "max_history": split.max_history,
        "users": len(split.user_ids),
        "items": {"catalog": split.n_items, "warm": n_warm, "cold": split.n_items - n_warm},
        "train": _case_stats(split, split.train),
        "valid": _case_stats(split, split.valid),
        "test": _case_stats(split, split.test),
        "cold_items": dict(split.info.get("cold_items", {})),
    }
    if "t1" in split.info:
        out["cutoffs"] = {k: split.info[k] for k in ("t1", "t2", "t1_date", "t2_date")}
    if "n_holdout_items" in split.info:
        out["holdout"] = {
            "fraction": split.info["config"]["holdout_fraction"],
            "items": split.info["n_holdout_items"],
            "interactions_removed": split.info["n_holdout_interactions_removed"],
        }
    return out


def save_split_summary(summary: dict[str, Any], path: Path) -> None:
    """Write the summary as indented JSON, atomically (temporary file + ``os.replace``)."""
    write_atomic(Path(path), json.dumps(summary, indent=2) + "\n")


def format_split_summary(summary: dict[str, Any]) -> str:
    """A readable multi-line table of ``split_summary``'s output, for the terminal."""
    items = summary["items"]
    lines = [f"dataset {summary['dataset']}  protocol {summary['protocol']}  max_history {summary['max_history']}"]
    if "cutoffs" in summary:
        c = summary["cutoffs"]
        lines.append(f"cutoffs  t1 {c['t1_date'][:10]}  t2 {c['t2_date'][:10]}")
    if "holdout" in summary:
        h = summary["holdout"]
        lines.append(f"holdout  {h['items']:,} items (f = {h['fraction']}), {h['interactions_removed']:,} "
                     "train/valid interactions removed")
    lines.append(f"users    {summary['users']:,}")
    lines.append(f"items    {items['catalog']:,} catalog = {items['warm']:,} warm + {items['cold']:,} cold")
    for key, count in summary["cold_items"].items():
        lines.append(f"         cold: {count:>7,}  {COLD_CATEGORY_LABELS.get(key, key)}")
    header = f"{'split':<6} {'cases':>9} {'warm':>9} {'cold':>8} {'cold %':>7} {'empty hist %':>13} {'mean hist':>9}"
    lines += ["", header, "-" * len(header)]
    for name in ("train", "valid", "test"):
        s = summary[name]
        lines.append(
            f"{name:<6} {s['cases']:>9,} {s['warm']:>9,} {s['cold']:>8,} {100 * s['cold_share']:>6.2f}% "
            f"{100 * s['empty_history_share']:>12.2f}% {s['mean_history_length']:>9.2f}"
        )
    return "\n".join(lines)
