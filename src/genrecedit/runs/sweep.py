"""Choosing λ and n (docs/method.md §5.10): edit with each candidate, score on validation cases, keep the best overall
NDCG@10 among candidates whose warm NDCG@10 drop is at most ``max_warm_drop``. Never reads the test set."""
from __future__ import annotations

import itertools
from pathlib import Path

from tqdm.auto import tqdm

from genrecedit.runs.backbone import LoadedRun
from genrecedit.runs.evaluate import evaluate_model, evaluation_cases
from genrecedit.runs.selection import (build_requests, check_selection_knowledge, make_editor, metrics_row,
                                       warm_drop)
from genrecedit.atomic import write_json

def sweep(run: LoadedRun, lams: list[float], per_item: list[int], out_dir: Path,
          max_warm_drop: float = 0.05) -> dict:
    """Grid over λ × n on ``run.config.eval`` cases (set ``eval.cases=valid``); writes ``sweep.json``.

    Returns {"base": ..., "cells": [{lam, n, metrics, efficacy, timings}], "chosen": {lam, n} | None}.
    """
    if run.config.eval.cases != "valid":
        raise ValueError("a sweep selects hyper-parameters: run it with eval.cases=valid")
    check_selection_knowledge(run)
    cases = evaluation_cases(run)
    run.config.save(Path(out_dir) / "sweep_config.yaml")
    base, _ = evaluate_model(run, cases, desc="sweep: base")
    base_row = metrics_row(base.summary())
    cells = []
    editor = make_editor(run)
    memory, memory_n = None, None  # layers, keys and δ do not depend on λ: one memory per n
    for n, lam in tqdm(list(itertools.product(per_item, lams)), desc="sweep", unit="cell"):
        if n != memory_n:
            memory_n = n
            memory = editor.memorize(build_requests(run.with_settings("knowledge", histories_per_item=n)),
                                     run.prepared.codes)
        artifact, report = editor.solve(memory, run.prepared.codes, run.prepared.split.item_ids, lam)
        edited, _ = evaluate_model(run, cases, artifact.schedule(run.config.eval.trigger, run.recommender.device),
                                   desc=f"sweep: λ={lam:g} n={n}")
        row = metrics_row(edited.summary())
        cells.append({"lam": lam, "n": n, "metrics": row, "warm_ndcg10_drop": warm_drop(row, base_row),
                      "cold_exposure": edited.cold_exposure(10),
                      "efficacy": report.efficacy, "converged": report.converged,
                      "update_seconds": report.timings_s["update_total"], "layers": report.layers})
        write_json(Path(out_dir) / "sweep.json", {"base": base_row, "cells": cells, "chosen": None})
    ok = [c for c in cells if c["warm_ndcg10_drop"] <= max_warm_drop]
    best = max(ok, key=lambda c: c["metrics"]["overall"]["ndcg@10"], default=None)
    chosen = None
    if best is not None and best["metrics"]["overall"]["ndcg@10"] > base_row["overall"]["ndcg@10"]:
        chosen = {"lam": best["lam"], "n": best["n"], "cold_exposure": best["cold_exposure"]}
    result = {"base": base_row, "cells": cells, "chosen": chosen, "max_warm_drop": max_warm_drop,
              "cases": run.config.eval.cases, "n_cases": len(cases)}
    write_json(Path(out_dir) / "sweep.json", result)
    return result


SWEEP_COLUMNS = ("λ", "n", "overall N@10", "warm N@10", "warm drop", "cold R@10", "cold N@10", "cold exposure",
                 "efficacy after")


def sweep_rows(result: dict) -> list[list[str]]:
    """The sweep grid as text cells under ``SWEEP_COLUMNS``: the unedited base first, then one row per (λ, n)
    cell (shared by the CLI's fixed-width table and the experiment report's markdown)."""
    def num(value: float | None) -> str:
        return "–" if value is None else f"{value:.4f}"

    def metrics(m: dict) -> list[str]:
        return [num(m["overall"]["ndcg@10"]), num(m["warm"]["ndcg@10"])]

    def cold(m: dict) -> list[str]:
        return [num(m["cold"]["recall@10"]), num(m["cold"]["ndcg@10"])]

    b = result["base"]
    rows = [["base", "–", *metrics(b), "–", *cold(b), "–", "–"]]
    for c in result["cells"]:
        m = c["metrics"]
        exposure = c.get("cold_exposure")  # absent from sweeps written before it was recorded
        rows.append([f"{c['lam']:g}", str(c["n"]), *metrics(m), f"{100 * c['warm_ndcg10_drop']:+.1f}%", *cold(m),
                     "–" if exposure is None else f"{100 * exposure:.1f}%", str(c["efficacy"]["after"])])
    return rows


def format_sweep(result: dict) -> str:
    """The sweep grid as a fixed-width terminal table plus the chosen cell."""
    rows = [list(SWEEP_COLUMNS), *sweep_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(SWEEP_COLUMNS) - 1)]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.append(f"chosen: {result['chosen']} (max warm drop {100 * result['max_warm_drop']:.0f}%, "
                 f"{result['cases']} cases: {result['n_cases']})")
    return "\n".join(lines)
