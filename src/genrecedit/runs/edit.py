"""GenRecEdit on a trained run: knowledge → requests → ``ColdItemEditor`` → artifact + report."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

import numpy as np

from genrecedit.edit.artifact import EditArtifact, TriggerMode
from genrecedit.edit.editor import ColdItemEditor, EditReport
from genrecedit.edit.diagnosis import knowledge_diagnosis
from genrecedit.edit.knowledge import (EditRequests, case_histories, items_to_edit, pseudo_histories,
                                       successor_histories)
from genrecedit.runs.backbone import LoadedRun
from genrecedit.evaluation.plots import probe_figure_png
from genrecedit.atomic import write_bytes, write_json

ARTIFACT_DIR = "edits"


def validation_midpoint(split) -> float:
    """The median timestamp of the validation period. With the *observed* knowledge source, selection on
    validation (METHOD §5.10) takes knowledge from before it and scores the cases from it on."""
    return float(np.median(split.valid.timestamps)) if len(split.valid) else 0.0


def uses_observed(run: LoadedRun) -> bool:
    """Whether the configured knowledge includes the cold items' observed validation interactions."""
    return run.config.knowledge.source in ("observed", "pseudo+observed")


def build_requests(run: LoadedRun, items: np.ndarray | None = None,
                   observed_from: Literal["first_half", "whole"] | None = None) -> EditRequests:
    """Edit requests for ``items`` (default: every item absent from training) from the configured source.

    ``observed_from``: which part of the validation period observed knowledge comes from: ``first_half`` (the
    selection edit, scored on the second half), ``whole`` (the edit that ships); default: the first half when
    ``eval.cases`` is valid, else the whole period. Either way only validation cases are read."""
    prepared, kcfg = run.prepared, run.config.knowledge
    split = prepared.split
    items = items_to_edit(split) if items is None else items
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


def edit_run(run: LoadedRun, out_dir: Path, items: np.ndarray | None = None,
             previous: EditArtifact | None = None) -> tuple[EditArtifact, EditReport]:
    """Inject ``items`` (default: all cold items) and write ``<out_dir>/edits/`` and ``edit_report.json``. With
    ``edit.refit`` set (and no ``previous`` batch) λ is first re-fit on validation (``calibrate.json``)."""
    editor = make_editor(run)
    requests = build_requests(run, items)
    memory = editor.memorize(requests, run.prepared.codes, previous)
    positions = run.config.edit.positions
    # exact token matching against training, no model: which request keys training already answers differently
    diagnosis = knowledge_diagnosis(requests, run.prepared.codes, run.prepared.split.train,
                                    list(range(run.prepared.codes.shape[1])) if positions is None
                                    else sorted(set(positions)))
    refit = None
    if run.config.edit.refit is not None and previous is None:
        from genrecedit.runs.calibrate import refit_lam  # it builds on this module

        t0 = time.perf_counter()
        result = refit_lam(run, out_dir, items, memory)  # solves this very batch at each λ it tries
        refit = {"by": result["by"], "target": result["target"], "lam_selected": run.config.edit.lam,
                 "lam_shipped": result["chosen_lam"], "edits_tried": len(result["trials"]),
                 "seconds": time.perf_counter() - t0}  # solves and validation decoding: not part of the update time
        run = run.with_settings("edit", lam=result["chosen_lam"])
    artifact, report = editor.solve(memory, run.prepared.codes, run.prepared.split.item_ids, run.config.edit.lam)
    out_dir = Path(out_dir)
    artifact.save(out_dir / ARTIFACT_DIR)
    run.config.save(out_dir / "edit_config.yaml")
    write_json(out_dir / "edit_report.json", {**report.to_dict(), "knowledge": dataclasses.asdict(run.config.knowledge),
                                              "lam": run.config.edit.lam, "refit": refit, "diagnosis": diagnosis})
    if report.probe is not None:
        write_bytes(out_dir / "probe.png", probe_figure_png(np.asarray(report.probe["accuracy"]), report.layers))
    return artifact, report
