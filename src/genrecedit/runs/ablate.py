"""The paper's Table 3 on one trained run: GenRecEdit against its ablations, the layer policies over several seeds.

Cells: GenRecEdit (probe-located layers, one-one triggering), w/o position-wise (object-wise edit, ``objectwise.py``),
w/o classifier (random layer), w/o classifier (worst layer), w/o one-one triggering (every ΔW active at every step).
Seeds change the probe's train/validation split, the C0 sample and the random layers. Every finished cell is written
to ``<out>/cells/`` and reused by a rerun with the same configuration (so an interrupted run resumes).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from genrecedit.atomic import write_json
from genrecedit.config import cache_view
from genrecedit.edit.editor import ColdItemEditor
from genrecedit.runs.backbone import LoadedRun
from genrecedit.runs.edit import build_requests
from genrecedit.runs.evaluate import evaluate_model, evaluation_cases

METRICS = ("recall@10", "ndcg@10", "iid_ratio@10")
# name -> (edit config changes, trigger mode)
CELLS: dict[str, tuple[dict, str]] = {
    "GenRecEdit": ({"layer_policy": "probe"}, "one_one"),
    "w/o position-wise": ({"layer_policy": "probe", "scheme": "object_wise"}, "one_one"),
    "w/o classifier (random)": ({"layer_policy": "random"}, "one_one"),
    "w/o classifier (worst)": ({"layer_policy": "worst"}, "one_one"),
    "w/o one-one triggering": ({"layer_policy": "probe"}, "all"),
}


def _summary(result) -> dict:
    s = result.summary()
    return {sub: {m: s[sub][m] for m in METRICS} | {"n_cases": s[sub]["n_cases"]} for sub in s}


def _cell_key(run: LoadedRun, name: str, seed: int, n_cases: int) -> str:
    recipe = json.dumps([run.base_hash, cache_view(dataclasses.asdict(run.config.edit), "edit"),
                         dataclasses.asdict(run.config.knowledge),
                         dataclasses.asdict(run.config.decode), name, seed, n_cases], sort_keys=True, default=str)
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def ablate(run: LoadedRun, out_dir: Path, seeds: list[int], cells: list[str] | None = None) -> dict:
    """Run every (cell, seed) on ``run.config.eval`` cases; writes ``ablations.json`` and ``ablations.md``.

    Returns {"base": metrics, "cells": {name: {"seeds": [...], "mean": metrics, "std": metrics}}}.
    """
    names = list(CELLS) if cells is None else cells
    unknown = [n for n in names if n not in CELLS]
    if unknown:
        raise ValueError(f"unknown ablation cells {unknown}; known: {list(CELLS)}")
    out_dir = Path(out_dir)
    cases = evaluation_cases(run)
    requests = build_requests(run)
    base, _ = evaluate_model(run, cases, desc="ablations: base")
    rows: dict[str, list[dict]] = {n: [] for n in names}
    edits: dict[tuple, tuple] = {}  # (edit changes, seed) -> (artifact, report): the trigger ablation reuses it
    for name in tqdm(names, desc="ablations", unit="cell"):
        changes, trigger = CELLS[name]
        for seed in seeds:
            path = out_dir / "cells" / f"{_cell_key(run, name, seed, len(cases))}.json"
            if path.exists():
                rows[name].append(json.loads(path.read_text()))
                continue
            key = (tuple(sorted(changes.items())), seed)
            if key not in edits:
                cfg = dataclasses.replace(run.config.edit, seed=seed, **changes)
                editor = ColdItemEditor(run.recommender, run.prepared.split.train, run.base_hash, cfg,
                                        Path(run.config.cache_dir) / "c0")
                edits[key] = editor.edit(requests, run.prepared.codes, run.prepared.split.item_ids)
            artifact, report = edits[key]
            edited, _ = evaluate_model(run, cases, artifact.schedule(trigger, run.recommender.device),
                                       desc=f"ablations: {name} (seed {seed})")
            row = {"seed": seed, "metrics": _summary(edited), "layers": report.layers,
                   "efficacy": report.efficacy, "converged": report.converged,
                   "update_seconds": report.timings_s["update_total"]}
            write_json(path, row)
            rows[name].append(row)
    result = {"base": _summary(base), "n_cases": len(cases), "cases": run.config.eval.cases,
              "cells": {n: {"seeds": r, **_aggregate(r)} for n, r in rows.items()}}
    write_json(out_dir / "ablations.json", result)
    (out_dir / "ablations.md").write_text(format_ablations(result) + "\n")
    return result


def _aggregate(rows: list[dict]) -> dict:
    agg = {"mean": {}, "std": {}}
    for sub in rows[0]["metrics"]:
        for stat, fn in (("mean", np.mean), ("std", np.std)):
            agg[stat][sub] = {m: float(fn([r["metrics"][sub][m] or 0.0 for r in rows])) for m in METRICS}
    return agg


def format_ablations(result: dict) -> str:
    """Markdown: mean ± std over seeds of overall/warm/cold R@10 and N@10, and the layers each seed used."""
    head = ("| variant | seeds | overall N@10 | warm N@10 | cold R@10 | cold N@10 | cold IID@10 | layers |\n"
            "|---|---|---|---|---|---|---|---|")
    b = result["base"]
    lines = [head, f"| TIGER (no edit) | – | {b['overall']['ndcg@10']:.4f} | {b['warm']['ndcg@10']:.4f} | "
                   f"{b['cold']['recall@10'] or 0:.4f} | {b['cold']['ndcg@10'] or 0:.4f} | "
                   f"{b['cold']['iid_ratio@10'] or 0:.3f} | – |"]
    for name, cell in result["cells"].items():
        m, s = cell["mean"], cell["std"]

        def f(sub: str, metric: str, digits: int = 4) -> str:
            return f"{m[sub][metric]:.{digits}f} ± {s[sub][metric]:.{digits}f}"
        layers = "; ".join(str(r["layers"]) for r in cell["seeds"])
        lines.append(f"| {name} | {len(cell['seeds'])} | {f('overall', 'ndcg@10')} | {f('warm', 'ndcg@10')} | "
                     f"{f('cold', 'recall@10')} | {f('cold', 'ndcg@10')} | {f('cold', 'iid_ratio@10', 3)} | "
                     f"{layers} |")
    lines.append(f"\n{result['cases']} cases: {result['n_cases']}")
    return "\n".join(lines)
