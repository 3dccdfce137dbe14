"""Scoring grid models on named case sets, and merging grid cells with their conflict statistics."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrecedit.config import RunConfig
from genrecedit.data.dataset import CaseSet
from genrecedit.evaluation.report import evaluate_topk
from genrecedit.merging.conflicts import conflict_stats
from genrecedit.merging.merge import load_checkpoint, merge_models
from genrecedit.merging.spec import TASK_VECTOR_METHODS, parse_spec
from genrecedit.model.recommender import Recommender
from genrecedit.model.tiger import load_model
from genrecedit.runs.backbone import MODEL_DIR

KEPT_METRICS = ("recall@10", "ndcg@10", "iid_ratio@10", "n_cases")


@dataclass
class EvalSet:
    """Cases of one context and time period, with what counts as cold for them.

    codes: [n_items, P] SIDs of the context's catalog (decoding is constrained to it); cold: [n] bool per case;
    warm: [n_items] bool, the catalog as known before these cases."""

    name: str
    cases: CaseSet
    cold: np.ndarray
    warm: np.ndarray
    codes: np.ndarray
    run_config: RunConfig


def evaluate_run_dir(run_dir: Path, sets: list[EvalSet]) -> dict[str, dict]:
    """{set name: {"overall"|"warm"|"cold": {R@10, N@10, IID@10, n_cases}}, "_seconds": …} for one checkpoint."""
    model, _, layout, _ = load_model(Path(run_dir) / MODEL_DIR)
    model.requires_grad_(False)
    out: dict[str, dict] = {}
    t0 = time.perf_counter()
    for s in sets:
        rec = Recommender(model, layout, s.codes)
        items = rec.recommend(s.cases.histories, s.run_config.decode).items.numpy()
        summary = evaluate_topk(items, s.cases.targets, s.cold, s.warm, None, (10,)).summary()
        out[s.name] = {sub: {k: v for k, v in row.items() if k in KEPT_METRICS} for sub, row in summary.items()}
    out["_seconds"] = time.perf_counter() - t0
    return out


def merge_cell(name: str, spec: dict, out_dir: Path, conflict_density: float = 0.5) -> dict:
    """Merge as ``spec`` (a mergekit-style mapping) says into ``out_dir`` (reused when present); for task-vector
    methods also the sign-conflict statistics of the task vectors, untrimmed and trimmed at ``conflict_density``."""
    parsed = parse_spec(spec)
    t0 = time.perf_counter()
    if not (Path(out_dir) / MODEL_DIR / "model.json").is_file():
        merge_models(parsed, out_dir)
    info: dict = {"name": name, "spec": spec, "weights": parsed.weights(), "seconds": time.perf_counter() - t0}
    if parsed.merge_method in TASK_VECTOR_METHODS:
        base = load_checkpoint(parsed.base_model).state  # type: ignore[arg-type]
        states = [load_checkpoint(m.model).state for m in parsed.models]
        info["conflicts"] = {"untrimmed": conflict_stats(base, states, 1.0),
                             "trimmed": conflict_stats(base, states, conflict_density)}
    return info


def metric(evals: dict, model: str, eval_set: str, subset: str = "overall", key: str = "ndcg@10") -> float | None:
    return evals.get(model, {}).get(eval_set, {}).get(subset, {}).get(key)
