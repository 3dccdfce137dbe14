"""MMGRid: a grid of checkpoints over time periods (or domains), their merges, and one results file.

Temporal grid (``kind: temporal``), on one dataset's time line cut at ``period_quantiles``:
- ``base``: trained from scratch on P0; ``init``: its untrained seeded initialisation (kept as a base for task
  vectors that has learned nothing).
- ``P{k}-fb`` ("from base"): the base fine-tuned on P_k alone, k ≥ 1.
- ``P{k}-inc`` ("incremental"): P_k's fine-tune started from ``P{k-1}-inc`` (``P1-inc`` is ``P1-fb``).
- ``union``: the base fine-tuned on P1 ∪ … ∪ P_last at once (the "retrain on the union" reference).
Every cell shares one tokenizer fitted on the items known before the test period, and one run config whose split
puts P0 … P_last in train and the test period in test, so ``genrecedit evaluate <cell>`` scores the test period.
Each model is scored on the held-out evaluation users' cases of every period P1 … P_last and on the test period T
(all users); cell P_k's "next period" is P_{k+1} (T for the last).

Everything is written under ``run_dir``: ``shared/`` (tokenizer), ``cells/<name>/`` and ``merges/<name>/`` (run
directories), ``edit/`` (merge + edit), ``results.json``; ``report.write_report`` turns that into markdown + PNGs.
A rerun reuses finished cells, merges and evaluations.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from genrecedit.atomic import write_json
from genrecedit.config import RunConfig
from genrecedit.merging.cells import CellData, train_cell, write_init_cell
from genrecedit.merging.grid_config import GridConfig
from genrecedit.merging.grid_eval import EvalSet, evaluate_run_dir, merge_cell, metric
from genrecedit.merging.periods import (EVAL_USER, TEST, TRAIN_USER, VALID_USER, first_seen, known_items,
                                        make_periods, period_cases, sample, user_roles)
from genrecedit.runs.prepare import Prepared, configure_runtime, layout_for, prepare
from genrecedit.runs.prepare import TOKENIZER_DIR

RESULTS_FILE = "results.json"
GRID_CONFIG_FILE = "grid.yaml"


def run_grid(cfg: GridConfig, run_dir: Path, echo=print) -> dict:
    """Build the grid ``cfg`` describes under ``run_dir``, merge, evaluate; returns (and writes) the results."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / GRID_CONFIG_FILE)
    if cfg.kind == "cross_domain":
        from genrecedit.merging.cross_domain import run_cross_domain

        return run_cross_domain(cfg, run_dir, echo)
    return run_temporal(cfg, run_dir, echo)


def temporal_run_config(cfg: GridConfig) -> RunConfig:
    q_test = cfg.temporal.period_quantiles[-1]
    return cfg.run(["split.protocol=time", f"split.valid_quantile={q_test}", f"split.test_quantile={q_test}",
                    "split.filter_test_users=false", f"eval.max_cases={cfg.eval_max_cases}",
                    f"eval.seed={cfg.eval_seed}"])


def temporal_cells(n_periods: int, union: bool) -> list[tuple[str, list[int], str | None]]:
    """(name, training periods, parent cell) in training order; n_periods counts P0 … P_last (not T)."""
    last = n_periods - 1
    cells = [("base", [0], None)]
    cells += [(f"P{k}-fb", [k], "base") for k in range(1, n_periods)]
    cells += [(f"P{k}-inc", [k], "P1-fb" if k == 2 else f"P{k - 1}-inc") for k in range(2, n_periods)]
    if union:
        cells.append(("union", list(range(1, last + 1)), "base"))
    return cells


def inc_name(k: int) -> str:
    return "P1-fb" if k == 1 else f"P{k}-inc"


def temporal_merges(cells_dir: Path, n_periods: int, n_train: dict[str, int]) -> list[tuple[str, str, dict]]:
    """(name, family, merge spec) of every merge the report compares."""
    c = lambda name: str(cells_dir / name)  # noqa: E731
    ks = list(range(1, n_periods))
    fb, inc = [c(f"P{k}-fb") for k in ks], [c(inc_name(k)) for k in ks]

    def models(paths: list[str], weights: list[float] | None = None) -> list[dict]:
        # the paths are the last len(paths) periods' checkpoints, oldest first
        periods = ks[len(ks) - len(paths):]
        return [{"model": p, "context": {"period": f"P{k}"}, **({"weight": weights[i]} if weights else {})}
                for i, (p, k) in enumerate(zip(paths, periods))]

    counts = [n_train[f"P{k}-fb"] for k in ks]
    last2_inc, last2_fb = inc[-2:], fb[-2:]
    out = [
        ("avg-fb", "from-base", {"merge_method": "linear", "models": models(fb), "weighting": {"scheme": "uniform"}}),
        ("ta-fb", "from-base", {"merge_method": "task_arithmetic", "base_model": c("base"),
                                "models": models(fb, [1.0] * len(fb))}),
        ("ties-fb", "from-base", {"merge_method": "ties", "base_model": c("base"), "models": models(fb),
                                  "weighting": {"scheme": "uniform"}, "parameters": {"density": 0.5}}),
        ("dare-fb", "from-base", {"merge_method": "dare", "base_model": c("base"),
                                  "models": models(fb, [1.0] * len(fb)), "parameters": {"drop_rate": 0.5, "seed": 0}}),
        ("recency-fb", "from-base", {"merge_method": "linear", "models": models(fb),
                                     "weighting": {"scheme": "recency", "half_life": 1.0}}),
        ("count-fb", "from-base", {"merge_method": "linear", "models": models(fb, [float(n) for n in counts])}),
        ("avg-inc", "incremental", {"merge_method": "linear", "models": models(inc),
                                    "weighting": {"scheme": "uniform"}}),
        ("recency-inc-h0.5", "incremental", {"merge_method": "linear", "models": models(inc),
                                             "weighting": {"scheme": "recency", "half_life": 0.5}}),
        ("recency-inc-h1", "incremental", {"merge_method": "linear", "models": models(inc),
                                           "weighting": {"scheme": "recency", "half_life": 1.0}}),
        ("recency-inc-h2", "incremental", {"merge_method": "linear", "models": models(inc),
                                           "weighting": {"scheme": "recency", "half_life": 2.0}}),
        # base-model replacement: the same checkpoints, task vectors against bases that learned more or less
        ("ties-fb@init", "base-replacement", {"merge_method": "ties", "base_model": c("init"), "models": models(fb),
                                              "weighting": {"scheme": "uniform"}, "parameters": {"density": 0.5}}),
        ("ta-fb@init", "base-replacement", {"merge_method": "task_arithmetic", "base_model": c("init"),
                                            "models": models(fb, [1.0] * len(fb))}),
        ("ties-inc2@base", "base-replacement", {"merge_method": "ties", "base_model": c("base"),
                                                "models": models(last2_inc), "weighting": {"scheme": "uniform"},
                                                "parameters": {"density": 0.5}}),
        ("ties-inc2@P1", "base-replacement", {"merge_method": "ties", "base_model": c("P1-fb"),
                                              "models": models(last2_inc), "weighting": {"scheme": "uniform"},
                                              "parameters": {"density": 0.5}}),
        ("ta-inc2@base", "base-replacement", {"merge_method": "task_arithmetic", "base_model": c("base"),
                                              "models": models(last2_inc, [1.0, 1.0])}),
        ("ta-inc2@P1", "base-replacement", {"merge_method": "task_arithmetic", "base_model": c("P1-fb"),
                                            "models": models(last2_inc, [1.0, 1.0])}),
    ]
    # weight of the newer of the last two from-base checkpoints, against context statistics
    for a in (0.25, 0.5, 0.75):
        out.append((f"pair-fb-a{a}", "weight-sweep", {"merge_method": "linear",
                                                      "models": models(last2_fb, [1.0 - a, a])}))
    return out


def run_temporal(cfg: GridConfig, run_dir: Path, echo=print) -> dict:
    t_start = time.perf_counter()
    rcfg = temporal_run_config(cfg)
    configure_runtime(rcfg)
    shared = run_dir / "shared"
    prepared = prepare(rcfg, shared)
    split = prepared.split
    periods = make_periods(split, cfg.temporal.period_quantiles)
    roles = user_roles(len(split.user_ids), cfg.temporal.valid_user_fraction, cfg.temporal.eval_user_fraction,
                       cfg.user_seed)
    n_periods = len(periods.names) - 1
    tok_hash = prepared.tokenizer.quantizer_hash()
    cells_dir = run_dir / "cells"
    results = _load_results(run_dir)
    results.update(kind="temporal", dataset=rcfg.dataset, periods=_describe_periods(split, periods, roles))

    echo(f"periods: {[(p['name'], p['n_interactions']) for p in results['periods']]}")
    write_init_cell(rcfg, _cell_data(prepared, periods, roles, [0], shared, tok_hash), cells_dir / "init")
    cells: dict[str, dict] = {}
    for name, which, parent in temporal_cells(n_periods, cfg.temporal.union_cell):
        data = _cell_data(prepared, periods, roles, which, shared, tok_hash)
        budget = cfg.base_budget if parent is None else cfg.finetune_budget
        echo(f"cell {name}: periods {[periods.names[k] for k in which]}, {len(data.train)} samples, "
             f"from {parent or 'scratch'}")
        cells[name] = train_cell(name, rcfg, data, budget, cells_dir / name,
                                 cells_dir / parent if parent else None,
                                 {"periods": [periods.names[k] for k in which], "parent_cell": parent})
    results["cells"] = cells
    n_train = {name: c["n_train"] for name, c in cells.items()}

    sets = _eval_sets(prepared, periods, roles, rcfg, cfg)
    described = {s.name: {"n_cases": len(s.cases), "n_cold": int(s.cold.sum()),
                          "targets_hash": _targets_hash(s.cases.targets)} for s in sets}
    if results.get("eval_sets") != described:  # other cases than the cached scores were computed on
        results.pop("evaluations", None)
        results.pop("edit", None)
    results["eval_sets"] = described
    evals = results.setdefault("evaluations", {})
    for name in ["init", *cells]:
        if name not in evals:
            echo(f"evaluate {name}")
            evals[name] = evaluate_run_dir(cells_dir / name, sets)
            write_json(run_dir / RESULTS_FILE, results)

    merges = results.setdefault("merges", {})
    for name, family, spec in temporal_merges(cells_dir, n_periods, n_train):
        if name not in merges:
            echo(f"merge {name}")
            merges[name] = {**merge_cell(name, spec, run_dir / "merges" / name), "family": family}
        if name not in evals:
            evals[name] = evaluate_run_dir(run_dir / "merges" / name, sets)
        write_json(run_dir / RESULTS_FILE, results)

    if cfg.edit_merged and "edit" not in results:
        best = max((m for m in merges if merges[m]["family"] == "from-base"),
                   key=lambda m: metric(evals, m, TEST) or -1.0)
        echo(f"merge + edit on {best}")
        results["edit"] = merge_and_edit(run_dir / "merges" / best, run_dir / "edit" / best, cfg)
        results["edit"]["model"] = best
    results["seconds"] = results.get("seconds", 0.0) + time.perf_counter() - t_start
    write_json(run_dir / RESULTS_FILE, results)
    return results


def merge_and_edit(merged: Path, out_dir: Path, cfg: GridConfig) -> dict:
    """GenRecEdit on a merged run: inject the test period's new items, score the test cases before and after."""
    from genrecedit.runs.backbone import load_run
    from genrecedit.runs.edit import edit_run
    from genrecedit.runs.evaluate import evaluate_model, evaluation_cases

    run = load_run(merged, [*cfg.overrides, f"eval.max_cases={cfg.eval_max_cases}", f"eval.seed={cfg.eval_seed}"])
    cases = evaluation_cases(run)
    before, _ = evaluate_model(run, cases, desc="before edit")
    t0 = time.perf_counter()
    artifact, report = edit_run(run, out_dir)
    edit_s = time.perf_counter() - t0
    after, _ = evaluate_model(run, cases, artifact.schedule(run.config.eval.trigger, run.recommender.device),
                              desc="after edit")
    keep = lambda s: {sub: {k: v for k, v in row.items() if k in ("recall@10", "ndcg@10", "n_cases")}  # noqa: E731
                      for sub, row in s.summary().items()}
    return {"before": keep(before), "after": keep(after), "n_items": report.n_items,
            "n_requests": report.n_requests, "layers": report.layers, "efficacy": report.efficacy,
            "edit_seconds": edit_s, "artifact": str(out_dir)}


def _cell_data(prepared: Prepared, periods, roles, which: list[int], shared: Path, tok_hash: str) -> CellData:
    split = prepared.split
    return CellData(period_cases(split, periods, roles, which, TRAIN_USER),
                    period_cases(split, periods, roles, which, VALID_USER), prepared.codes,
                    layout_for(prepared.tokenizer), shared / TOKENIZER_DIR, tok_hash)


def _eval_sets(prepared: Prepared, periods, roles, rcfg: RunConfig, cfg: GridConfig) -> list[EvalSet]:
    split, seen = prepared.split, first_seen(prepared.split)
    sets = []
    for k in range(1, len(periods.names)):
        cases = sample(period_cases(split, periods, roles, [k], EVAL_USER), cfg.eval_max_cases, cfg.eval_seed + k)
        sets.append(EvalSet(periods.names[k], cases, seen[cases.targets] >= periods.start(k),
                            known_items(split, periods, k), prepared.codes, rcfg))
    return sets


def _describe_periods(split, periods, roles) -> list[dict]:
    out = []
    all_times = np.concatenate([split.train.timestamps, split.test.timestamps])
    all_users = np.concatenate([split.train.users, split.test.users])
    seen = first_seen(split)
    for k, name in enumerate(periods.names):
        in_k = periods.of(all_times) == k
        out.append({"name": name, "start": periods.start(k), "end": periods.end(k),
                    "n_interactions": int(in_k.sum()), "n_users": int(np.unique(all_users[in_k]).size),
                    "n_new_items": int(((seen >= periods.start(k)) & (seen < periods.end(k))).sum()),
                    "n_train_samples": int((in_k[: len(split.train)] & (roles[split.train.users] == TRAIN_USER))
                                           .sum()) if name != TEST else 0})
    return out


def _targets_hash(targets: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(targets, dtype="<i8").tobytes()).hexdigest()[:16]


def _load_results(run_dir: Path) -> dict:
    path = run_dir / RESULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


__all__ = ["run_grid", "run_temporal", "temporal_cells", "temporal_merges", "temporal_run_config",
           "RESULTS_FILE"]
