"""One grid cell: a checkpoint trained on one context's cases, written as a normal run directory.

A cell's directory is what ``genrecedit evaluate`` / ``edit`` / ``merge`` read: ``config.yaml`` (the context's run
config), ``tokenizer/`` (a copy of the grid's one tokenizer), ``model/`` (written by ``train_tiger``), plus
``cell.json`` (its periods or domain, its parent cell and the weights hash it started from, training history).

Fine-tuning from a parent is ``train_tiger(init_from=<parent>/model)``: the parent's best weights, a fresh optimizer
and schedule, so the one training loop of the product trains every cell.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from genrecedit.atomic import write_json
from genrecedit.config import RunConfig
from genrecedit.data.dataset import CaseSet
from genrecedit.errors import ConfigError
from genrecedit.merging.grid_config import Budget
from genrecedit.model.tiger import META_FILE, build_tiger, save_model, weights_hash
from genrecedit.model.tokens import TokenLayout
from genrecedit.model.train import TrainConfig, train_tiger
from genrecedit.runs.backbone import CONFIG_FILE, MODEL_DIR
from genrecedit.runs.prepare import TOKENIZER_DIR
from genrecedit.tokenizer.sids import SemanticIdTokenizer

CELL_FILE = "cell.json"


@dataclass
class CellData:
    """What a cell trains on: samples, early-stopping cases, the catalog's SIDs [n_items, P] and their tokenizer."""

    train: CaseSet
    valid: CaseSet
    codes: np.ndarray
    layout: TokenLayout
    tokenizer_dir: Path
    tokenizer_hash: str


def train_config(cfg: RunConfig, budget: Budget) -> TrainConfig:
    changes = {k: v for k, v in asdict(budget).items() if v is not None}
    return dataclasses.replace(cfg.train, device=cfg.device, seed=cfg.seed, **changes)


def is_done(run_dir: Path) -> bool:
    return (Path(run_dir) / CELL_FILE).is_file()


def train_cell(name: str, cfg: RunConfig, data: CellData, budget: Budget, run_dir: Path,
               parent: Path | None, describe: dict) -> dict:
    """Train (or, if ``cell.json`` exists, reuse) the cell at ``run_dir``; returns its ``cell.json`` content.

    parent: a run directory whose best weights the cell starts from; None trains from the seeded initialisation.
    """
    run_dir = Path(run_dir)
    if is_done(run_dir):
        return json.loads((run_dir / CELL_FILE).read_text())
    if len(data.train) == 0 or len(data.valid) == 0:
        raise ConfigError(f"cell {name}: {len(data.train)} training samples and {len(data.valid)} validation "
                          f"cases; widen its periods or the user fractions")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / CONFIG_FILE)
    if not (run_dir / TOKENIZER_DIR).exists():
        shutil.copytree(data.tokenizer_dir, run_dir / TOKENIZER_DIR)
    tcfg = train_config(cfg, budget)
    model_dir = run_dir / MODEL_DIR
    init_from = Path(parent) / MODEL_DIR if parent is not None else None
    if init_from is not None:
        init_hash = json.loads((init_from / META_FILE).read_text())["weights_hash"]
    else:
        init_hash = weights_hash(build_tiger(cfg.model, data.layout, seed=tcfg.seed))
    t0 = time.perf_counter()
    result = train_tiger(data.train, data.valid, data.codes, data.layout, cfg.model, tcfg, model_dir,
                         data.tokenizer_hash, resume=True, init_from=init_from)
    cell = {"name": name, **describe, "parent": str(parent) if parent else None, "init_weights_hash": init_hash,
            "n_train": len(data.train), "n_valid": len(data.valid), "budget": asdict(budget),
            "train": asdict(result), "wall_seconds": time.perf_counter() - t0,
            "weights_hash": json.loads((model_dir / "model.json").read_text())["weights_hash"]}
    write_json(run_dir / CELL_FILE, cell)
    return cell


def write_init_cell(cfg: RunConfig, data: CellData, run_dir: Path) -> dict:
    """The untrained, seeded initialisation the base starts from, as a run directory (a base for task vectors
    that has learned nothing: the analogue of the paper's LLM base)."""
    run_dir = Path(run_dir)
    if is_done(run_dir):
        return json.loads((run_dir / CELL_FILE).read_text())
    cfg.save(run_dir / CONFIG_FILE)
    if not (run_dir / TOKENIZER_DIR).exists():
        shutil.copytree(data.tokenizer_dir, run_dir / TOKENIZER_DIR)
    model = build_tiger(cfg.model, data.layout, seed=cfg.seed)
    meta = save_model(model, cfg.model, data.layout, run_dir / MODEL_DIR, data.tokenizer_hash,
                      extra={"untrained": True})
    cell = {"name": "init", "parent": None, "weights_hash": meta.weights_hash, "n_train": 0}
    write_json(run_dir / CELL_FILE, cell)
    return cell


def save_tokenizer(tokenizer: SemanticIdTokenizer, directory: Path) -> None:
    if not Path(directory).exists():
        tokenizer.save(directory)
