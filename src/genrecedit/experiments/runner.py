"""``run_experiment``: the paper's section-5 tables and figures on one trained run, in one output directory.

Order: the run (trained first when missing) → λ, n chosen on validation (``runs.sweep.sweep``) → every requested
cell on test at the chosen (λ, n) → ``results.json``, ``report.md``, PNGs, ``experiment.yaml``. Each unit of work
is cached under ``<out>/cells/`` (``cells.CellCache``), so an interrupted experiment resumes where it stopped.
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from genrecedit.atomic import write_json
from genrecedit.config import load_config
from genrecedit.errors import ConfigError
from genrecedit.experiments import cells as units
from genrecedit.experiments.figures import write_figures
from genrecedit.experiments.spec import ExperimentConfig
from genrecedit.experiments.tables import write_report
from genrecedit.runs.backbone import CONFIG_FILE, MODEL_DIR, LoadedRun, load_run, train_backbone

# cells that need the chosen (λ, n), i.e. the validation sweep
NEEDS_SELECTION = {"table1", "table2", "table3", "table4", "sources", "fig5", "fig6", "fig7", "fig8"}


def ensure_run(cfg: ExperimentConfig) -> LoadedRun:
    """Load ``cfg.run``; train it from ``cfg.train_config`` first when it holds no trained model."""
    run_dir = Path(cfg.run)
    if not ((run_dir / CONFIG_FILE).exists() and (run_dir / MODEL_DIR / "model.json").exists()):
        if cfg.train_config is None:
            raise ConfigError(f"{run_dir} is not a trained run and the experiment names no train_config to "
                              f"train it with")
        train_backbone(load_config(cfg.train_config, cfg.overrides), run_dir)
    return load_run(run_dir, cfg.overrides)


def _plan(cfg: ExperimentConfig) -> list[str]:
    """The units the requested cells need, in run order (for the progress bar)."""
    wanted = set(cfg.cells)
    plan = []
    if wanted & NEEDS_SELECTION:
        plan.append("selection")
    if wanted & {"table1", "table2", "fig3", "fig5"}:
        plan.append("tiger")
    if wanted & {"table1", "table2"}:
        plan += ["popularity", "genrecedit", *[f"baseline:{b}" for b in cfg.baselines]]
    if wanted & {"table1", "table2", "table4"}:
        plan.append("update_times")
    if wanted & {"sources", "fig5", "fig8"}:
        plan += [f"source:{s}" for s in _sources(cfg)]
    if "fig6" in wanted:
        plan += [f"n:{n}" for n in cfg.ns]
    if "table3" in wanted:
        plan.append("ablations")
    return list(dict.fromkeys(plan))


def _sources(cfg: ExperimentConfig) -> list[str]:
    wanted = set(cfg.cells)
    sources = list(cfg.sources) if "sources" in wanted else []
    if "fig5" in wanted:
        sources += ["pseudo", "upper_bound"]
    if wanted & {"fig8", "table1", "table2"}:
        sources.append("pseudo")
    return list(dict.fromkeys(sources))


def run_experiment(cfg: ExperimentConfig, out_dir: Path, command: str | None = None) -> dict:
    """Run every requested cell (resuming from ``<out_dir>/cells``); returns and writes ``results.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(out_dir / "experiment.yaml")
    started = time.perf_counter()
    run = ensure_run(cfg)
    test_run = units.variant(run, cases="test", max_cases=cfg.max_cases)
    valid_run = units.variant(run, cases="valid", max_cases=cfg.valid_max_cases)
    cache = units.CellCache(out_dir, run)
    res: dict = {"run": str(cfg.run), "base_hash": run.base_hash, "dataset": run.config.dataset,
                 "cells": list(cfg.cells), "decode": {"beam": run.config.decode.beam, "k": run.config.decode.k},
                 "run_config": run.config.to_dict(), "command": command or shlex.join(sys.argv),
                 "rows": {}, "sources": {}, "fig6": {}}
    lam = n = None
    bar = tqdm(_plan(cfg), desc="experiment", unit="unit")
    for unit in bar:
        bar.set_postfix_str(unit)
        if unit == "selection":
            res["selection"] = units.selection(cache, valid_run, cfg.lams, cfg.select_ns, cfg.max_warm_drop,
                                               out_dir / "selection")
            lam, n = res["selection"]["chosen"]["lam"], res["selection"]["chosen"]["n"]
            res["chosen"] = {"lam": lam, "n": n, "by": res["selection"]["chosen_by"]}
        elif unit == "tiger":
            res["rows"]["TIGER"] = units.tiger(cache, test_run)
        elif unit == "popularity":
            res["rows"].update({k: {"summary": v} for k, v in units.popularity(cache, test_run).items()})
        elif unit == "genrecedit":
            res["rows"]["GenRecEdit"] = units.edited(cache, test_run, "pseudo", lam, n)
        elif unit.startswith("baseline:"):
            name = unit.partition(":")[2]
            bdir = Path(cfg.baseline_dir) if cfg.baseline_dir else out_dir / "baselines"
            res["rows"][_display(name)] = units.baseline(cache, test_run, name, cfg.baselines[name], bdir)
        elif unit == "update_times":
            res["update_times"] = units.update_times(cache, test_run, lam, n, cfg.retrain, cfg.finetune,
                                                     out_dir / "updates")
        elif unit.startswith("source:"):
            source = unit.partition(":")[2]
            res["sources"][source] = units.edited(cache, test_run, source, lam, n)
        elif unit.startswith("n:"):
            per_item = int(unit.partition(":")[2])
            res["fig6"][str(per_item)] = units.edited(cache, test_run, "pseudo", lam, per_item)
        elif unit == "ablations":
            res["ablations"] = units.ablations(cache, test_run, lam, n, cfg.seeds, out_dir / "ablations")
    _add_update_rows(res)
    res["cache"] = {"reused": cache.reused, "computed": cache.computed}
    res["wall_seconds"] = time.perf_counter() - started
    res["figures"] = write_figures(res, cfg, out_dir)
    write_json(out_dir / "results.json", res)
    write_report(res, cfg, out_dir)
    return res


def _add_update_rows(res: dict) -> None:
    """Finetune and Retrain rows of Table 1 come from the update-time unit (trained once, timed and scored)."""
    upd = res.get("update_times")
    if upd is None or "TIGER" not in res["rows"]:
        return
    for label in ("Retrain", "Finetune"):
        if "not_available" in upd:
            res["rows"][label] = {"not_available": upd["not_available"]}
        else:
            res["rows"][label] = {"summary": upd[label]["summary"]}


def _display(name: str) -> str:
    return {"sasrec": "SASRec", "bert4rec": "BERT4Rec", "vqrec": "VQ-Rec", "specgr": "SpecGR"}.get(name, name)
