"""GenRecEdit on a trained run: knowledge → requests → ``ColdItemEditor`` → artifact + report."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from genrecedit.edit.artifact import EditArtifact
from genrecedit.edit.editor import EditReport
from genrecedit.edit.diagnosis import knowledge_diagnosis
from genrecedit.runs.backbone import LoadedRun
from genrecedit.runs.calibrate import refit_lam
# build_requests and make_editor live in runs.selection (below calibrate, sweep and evaluate); other code imports
# them from here
from genrecedit.runs.selection import build_requests, make_editor
from genrecedit.evaluation.plots import probe_figure_png
from genrecedit.atomic import write_bytes, write_json

__all__ = ["ARTIFACT_DIR", "build_requests", "edit_run", "make_editor"]

ARTIFACT_DIR = "edits"


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
