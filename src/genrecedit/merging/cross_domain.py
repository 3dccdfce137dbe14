"""The cross-domain grid: two (or more) domains, one tokenizer over the union of their items, a shared base.

- Each domain is written as an atomic dataset folder (``data/<name>/``) with ids prefixed by the domain
  (``<name>:<id>``, so ids of different domains never collide), optionally a seeded sample of ``max_users`` of its
  users who have a test-period interaction; ``data/union/`` holds all of them.
- Tokenizer: fitted on the union of every domain's *training* items (each domain's own time split), the other
  catalog items assigned by the frozen quantiser; one copy in every cell, so a token means the same in every model.
- ``base``: trained from scratch on the union of the domains' training cases (each domain split at its own time
  quantiles); its run config is the union folder's (whose ``genrecedit evaluate`` uses the union's global time split,
  not the per-domain splits it was trained on). ``<domain>``: the base fine-tuned on that domain's training cases;
  its run config is the domain's, so ``genrecedit evaluate`` tests it on its own domain. ``init``: the base's
  untrained initialisation.
- Every model is tested on every domain's test cases (decoding constrained to that domain's catalog).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from genrecedit.atomic import write_bytes, write_json
from genrecedit.data.dataset import PAD_ITEM, CaseSet, RecDataset, Split
from genrecedit.data.protocols import make_split
from genrecedit.data.readers import load_dataset
from genrecedit.merging.cells import CellData, save_tokenizer, train_cell, write_init_cell
from genrecedit.merging.grid_config import GridConfig
from genrecedit.merging.grid_eval import EvalSet, evaluate_run_dir, merge_cell
from genrecedit.merging.periods import sample
from genrecedit.runs.prepare import TOKENIZER_DIR, configure_runtime, layout_for, prepare
from genrecedit.text.embed import embed_items, make_encoder
from genrecedit.tokenizer.sids import SemanticIdTokenizer

UNION = "union"


def write_domain(ds: RecDataset, name: str, folder: Path, max_users: int | None, test_quantile: float,
                 seed: int) -> Path:
    """Write ``ds`` (ids prefixed ``<name>:``) as ``folder/<folder.name>.inter`` + ``.item``; with ``max_users``, a
    seeded sample of the users with an interaction at or after the ``test_quantile`` time cutoff."""
    inter = ds.interactions
    if max_users is not None:
        cutoff = np.quantile(inter["timestamp"].to_numpy(), test_quantile)
        test_users = np.sort(inter.loc[inter["timestamp"] >= cutoff, "user_id"].astype(str).unique())
        rng = np.random.default_rng(seed)
        keep = rng.choice(test_users, size=min(max_users, test_users.size), replace=False)
        inter = inter[inter["user_id"].astype(str).isin(set(keep))]
    items = ds.items.loc[sorted(set(inter["item_id"].astype(str)))]
    _write_atomic(folder, [f"{name}:{u}" for u in inter["user_id"]], [f"{name}:{i}" for i in inter["item_id"]],
                  inter["timestamp"].to_numpy(), [f"{name}:{i}" for i in items.index], items["text"].tolist())
    return folder


def write_union(folders: list[Path], out: Path) -> Path:
    users, items, times, ids, texts = [], [], [], [], []
    for f in folders:
        ds = load_dataset(str(f))
        users += ds.interactions["user_id"].tolist()
        items += ds.interactions["item_id"].tolist()
        times.append(ds.interactions["timestamp"].to_numpy())
        ids += list(ds.items.index)
        texts += ds.items["text"].tolist()
    _write_atomic(out, users, items, np.concatenate(times), ids, texts)
    return out


def _write_atomic(folder: Path, users: list[str], items: list[str], times: np.ndarray, item_ids: list[str],
                  texts: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\ttimestamp:float"]
    inter += [f"{u}\t{i}\t{t:.0f}" for u, i, t in zip(users, items, times)]
    item_lines = ["item_id:token\ttitle:token_seq"] + [f"{i}\t{t}" for i, t in zip(item_ids, texts)]
    for suffix, lines in ((".inter", inter), (".item", item_lines)):
        write_bytes(folder / f"{folder.name}{suffix}", ("\n".join(lines) + "\n").encode())


def fit_union_tokenizer(cfg, union_ds: RecDataset, splits: list[Split]) -> SemanticIdTokenizer:
    """Fit on every domain's training items, assign the rest of the union catalog with the frozen quantiser."""
    ids = sorted(str(i) for i in union_ds.items.index)
    warm_ids = set().union(*({s.item_ids[i] for i in np.flatnonzero(s.warm)} for s in splits))
    emb = embed_items(make_encoder(cfg.embedding.encoder, cfg.device, cfg.embedding.batch_size),
                      union_ds.items.loc[ids, "text"].tolist(), Path(cfg.cache_dir) / "embeddings")
    warm = np.asarray([i in warm_ids for i in ids])
    tok = SemanticIdTokenizer(dataclasses.replace(cfg.tokenizer, device=cfg.device, seed=cfg.seed))
    tok.fit(emb[warm], [i for i, w in zip(ids, warm) if w])
    if (~warm).any():
        tok.assign(emb[~warm], [i for i, w in zip(ids, warm) if not w])
    return tok


def remap(cases: CaseSet, index: np.ndarray) -> CaseSet:
    """Item indices of one catalog -> another through ``index`` [n_items_from] (pads stay pads)."""
    hist = np.where(cases.histories == PAD_ITEM, PAD_ITEM, index[np.maximum(cases.histories, 0)])
    return CaseSet(cases.users, hist, index[cases.targets], cases.timestamps)


def concat(parts: list[CaseSet]) -> CaseSet:
    return CaseSet(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("users", "histories", "targets", "timestamps")))


def run_cross_domain(cfg: GridConfig, run_dir: Path, echo=print) -> dict:
    t_start = time.perf_counter()
    domains = cfg.cross_domain.domains
    base_cfg = cfg.run()
    configure_runtime(base_cfg)
    data_dir = run_dir / "data"
    folders = []
    for d in domains:
        folder = data_dir / d.name
        if not (folder / f"{d.name}.inter").is_file():
            echo(f"writing {d.name} ({d.dataset}, max_users {d.max_users})")
            write_domain(load_dataset(d.dataset, None, Path(base_cfg.cache_dir)), d.name, folder, d.max_users,
                         base_cfg.split.test_quantile, cfg.user_seed)
        folders.append(folder)
    if not (data_dir / UNION / f"{UNION}.inter").is_file():
        write_union(folders, data_dir / UNION)
    cfgs = {d.name: cfg.run([f"dataset={f}"]) for d, f in zip(domains, folders)}
    cfgs[UNION] = cfg.run([f"dataset={data_dir / UNION}"])
    shared = run_dir / "shared"
    if not (shared / TOKENIZER_DIR).exists():
        splits = [make_split(load_dataset(str(f)), cfgs[d.name].split) for d, f in zip(domains, folders)]
        echo("fitting the union tokenizer")
        save_tokenizer(fit_union_tokenizer(cfgs[UNION], load_dataset(str(data_dir / UNION)), splits),
                       shared / TOKENIZER_DIR)
    prepared = {name: prepare(c, shared) for name, c in cfgs.items()}
    union = prepared[UNION]
    layout, tok_hash = layout_for(union.tokenizer), union.tokenizer.quantizer_hash()
    union_index = {item: i for i, item in enumerate(union.split.item_ids)}
    to_union = {d.name: np.asarray([union_index[i] for i in prepared[d.name].split.item_ids]) for d in domains}
    tok_dir = shared / TOKENIZER_DIR

    cells_dir = run_dir / "cells"
    base_data = CellData(concat([remap(prepared[d.name].split.train, to_union[d.name]) for d in domains]),
                         concat([remap(prepared[d.name].split.valid, to_union[d.name]) for d in domains]),
                         union.codes, layout, tok_dir, tok_hash)
    write_init_cell(cfgs[UNION], base_data, cells_dir / "init")
    echo(f"cell base: {len(base_data.train)} samples from {[d.name for d in domains]}")
    cells = {"base": train_cell("base", cfgs[UNION], base_data, cfg.base_budget, cells_dir / "base", None,
                                {"domains": [d.name for d in domains], "parent_cell": None})}
    for d in domains:
        p = prepared[d.name]
        data = CellData(p.split.train, p.split.valid, p.codes, layout, tok_dir, tok_hash)
        echo(f"cell {d.name}: {len(data.train)} samples, from base")
        cells[d.name] = train_cell(d.name, cfgs[d.name], data, cfg.finetune_budget, cells_dir / d.name,
                                   cells_dir / "base", {"domains": [d.name], "parent_cell": "base"})

    sets = [EvalSet(d.name, (cases := sample(prepared[d.name].split.test, cfg.eval_max_cases, cfg.eval_seed)),
                    prepared[d.name].split.is_cold(cases), prepared[d.name].split.warm, prepared[d.name].codes,
                    cfgs[d.name]) for d in domains]
    results = {"kind": "cross_domain", "domains": [dataclasses.asdict(d) for d in domains], "cells": cells,
               "context": {d.name: _domain_stats(prepared[d.name].split) for d in domains},
               "tokenizer": {"n_items": len(union.tokenizer), "fitted_on": int(sum(
                   prepared[d.name].split.warm.sum() for d in domains)), "quantizer_hash": tok_hash},
               "eval_sets": {s.name: {"n_cases": len(s.cases), "n_cold": int(s.cold.sum())} for s in sets}}
    evals = results.setdefault("evaluations", {})
    for name in ["init", *cells]:
        echo(f"evaluate {name}")
        evals[name] = evaluate_run_dir(cells_dir / name, sets)
    merges = results.setdefault("merges", {})
    for name, family, spec in cross_merges(cells_dir, [d.name for d in domains], cfg.cross_domain.alphas):
        echo(f"merge {name}")
        merges[name] = {**merge_cell(name, spec, run_dir / "merges" / name), "family": family}
        evals[name] = evaluate_run_dir(run_dir / "merges" / name, sets)
        write_json(run_dir / "results.json", results)
    results["seconds"] = time.perf_counter() - t_start
    write_json(run_dir / "results.json", results)
    return results


def cross_merges(cells_dir: Path, names: list[str], alphas: list[float]) -> list[tuple[str, str, dict]]:
    c = lambda n: str(cells_dir / n)  # noqa: E731
    models = [{"model": c(n), "context": {"domain": n}} for n in names]
    weighted = lambda ws: [{**m, "weight": w} for m, w in zip(models, ws)]  # noqa: E731
    out = [
        ("avg", "merge", {"merge_method": "linear", "models": models, "weighting": {"scheme": "uniform"}}),
        ("ta", "merge", {"merge_method": "task_arithmetic", "base_model": c("base"),
                         "models": weighted([1.0] * len(names))}),
        ("ties", "merge", {"merge_method": "ties", "base_model": c("base"), "models": models,
                           "weighting": {"scheme": "uniform"}, "parameters": {"density": 0.5}}),
        ("dare", "merge", {"merge_method": "dare", "base_model": c("base"), "models": weighted([1.0] * len(names)),
                           "parameters": {"drop_rate": 0.5, "seed": 0}}),
        ("ties@init", "base-replacement", {"merge_method": "ties", "base_model": c("init"), "models": models,
                                           "weighting": {"scheme": "uniform"}, "parameters": {"density": 0.5}}),
        ("ta@init", "base-replacement", {"merge_method": "task_arithmetic", "base_model": c("init"),
                                         "models": weighted([1.0] * len(names))}),
    ]
    if len(names) == 2:
        for a in alphas:
            out.append((f"linear-a{a}", "weight-sweep", {"merge_method": "linear", "models": weighted([a, 1 - a])}))
    return out


def _domain_stats(split: Split) -> dict:
    return {"n_train": len(split.train), "n_valid": len(split.valid), "n_test": len(split.test),
            "n_users": len(split.user_ids), "n_items": split.n_items, "n_warm_items": int(split.warm.sum())}
