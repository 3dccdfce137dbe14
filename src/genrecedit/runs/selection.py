"""What selection (``sweep``), the λ re-fit (``calibrate``), scoring (``evaluate``) and the shipped edit (``edit``)
share: the two halves of the validation period, the requests a run's edit learns from, the run's editor, and the
rows a selection compares.

It imports none of those four modules, so they form a one-way chain: selection ← evaluate ← sweep ← calibrate ←
edit (``edit_run`` re-fits λ through ``calibrate``). ``runs.edit`` re-exports ``build_requests`` and
``make_editor``, where other code has always imported them from.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from genrecedit.edit.artifact import TriggerMode
from genrecedit.edit.editor import ColdItemEditor
from genrecedit.edit.knowledge import EditRequests, case_histories, pseudo_histories, successor_histories
from genrecedit.errors import ConfigError
from genrecedit.runs.backbone import LoadedRun

REPORTED = ("recall@10", "ndcg@10", "iid_ratio@10")


def validation_midpoint(split) -> float:
    """The median timestamp of the validation period. With the *observed* knowledge source, selection on
    validation (docs/method.md §5.10) takes knowledge from before it and scores the cases from it on."""
    return float(np.median(split.valid.timestamps)) if len(split.valid) else 0.0


def uses_observed(run: LoadedRun) -> bool:
    """Whether the configured knowledge includes the cold items' observed validation interactions."""
    return run.config.knowledge.source in ("observed", "pseudo+observed")


def check_selection_knowledge(run: LoadedRun) -> None:
    """Refuse knowledge that is read from the test set (the Upper Bound): it cannot select λ or n, nor re-fit λ."""
    if run.config.knowledge.source == "upper_bound":
        raise ConfigError("knowledge.source=upper_bound teaches the test cases' own histories: selection never "
                          "reads the test set; select with pseudo, observed or pseudo+observed knowledge")


def metrics_row(summary: dict) -> dict:
    """The reported metrics of one evaluation summary, per subset (a sweep cell's or calibration trial's row)."""
    return {s: {m: summary[s][m] for m in REPORTED} | {"n_cases": summary[s]["n_cases"]} for s in summary}


def warm_drop(row: dict, base_row: dict) -> float:
    """Relative warm NDCG@10 drop of an edited row against the unedited one (> 0: the edit costs warm items)."""
    return 1 - row["warm"]["ndcg@10"] / max(base_row["warm"]["ndcg@10"], 1e-12)


def build_requests(run: LoadedRun, items: np.ndarray | None = None,
                   observed_from: Literal["first_half", "whole"] | None = None) -> EditRequests:
    """Edit requests for ``items`` (default: every item absent from training) from the configured source.

    ``observed_from``: which part of the validation period observed knowledge comes from: ``first_half`` (the
    selection edit, scored on the second half), ``whole`` (the edit that ships); default: the first half when
    ``eval.cases`` is valid, else the whole period. Either way only validation cases are read."""
    prepared, kcfg = run.prepared, run.config.knowledge
    split = prepared.split
    items = split.cold_items() if items is None else items
    parts = []
    if kcfg.source in ("pseudo", "pseudo+observed"):
        parts.append(pseudo_histories(split.train, split.warm, prepared.embeddings, items, kcfg.histories_per_item,
                                      kcfg.neighbours))
    if kcfg.source == "successor":  # text only, histories that end with a similar warm item
        parts.append(successor_histories(split.train, split.warm, prepared.embeddings, items,
                                         kcfg.histories_per_item, kcfg.neighbours))
    if uses_observed(run):
        observed = split.valid
        if observed_from not in (None, "first_half", "whole"):
            raise ValueError(f"observed_from is first_half, whole or None, got {observed_from!r}")
        if (observed_from or ("first_half" if run.config.eval.cases == "valid" else "whole")) == "first_half":
            # selecting on validation: knowledge from its first half only
            observed = observed.subset(np.flatnonzero(observed.timestamps < validation_midpoint(split)))
        parts.append(case_histories(observed, items, kcfg.histories_per_item))
    if kcfg.source == "upper_bound":
        parts.append(case_histories(split.test, items, kcfg.histories_per_item))
    return EditRequests.concat(parts)


def make_editor(run: LoadedRun, trigger: TriggerMode | None = None) -> ColdItemEditor:
    """The run's editor; ``trigger``: how its artifacts will be decoded (default: the run's ``eval.trigger``)."""
    edit_cfg = dataclasses.replace(run.config.edit, seed=run.config.seed)
    return ColdItemEditor(run.recommender, run.prepared.split.train, run.base_hash, edit_cfg,
                          Path(run.config.cache_dir) / "c0", trigger or run.config.eval.trigger)
