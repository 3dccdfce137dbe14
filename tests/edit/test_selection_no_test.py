"""Selection never reads the test split: every path that picks λ or n (the sweep, calibration, the λ re-fit inside
``edit_run``, the experiment's selection unit) runs on a tiny run whose ``split.test`` raises on any use."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from genrecedit.errors import ConfigError
from genrecedit.runs.backbone import LoadedRun, load_run
from no_test_split import MESSAGE, NoTestSplit, without_test

OVER = ["knowledge.source=pseudo+observed", "knowledge.histories_per_item=4", "eval.max_cases=30",
        "eval.trigger=preserve"]


@pytest.fixture
def guarded(tiny_run):
    """guarded(*overrides) -> the tiny run (OVER + overrides) whose test split raises on any read."""
    def make(*overrides: str) -> LoadedRun:
        run = without_test(load_run(tiny_run, OVER + list(overrides)))
        with pytest.raises(AssertionError, match=MESSAGE):  # the guard itself works
            len(run.prepared.split.test)
        return run
    return make


def test_the_guard_raises_on_any_read():
    guard = NoTestSplit()
    for read in (lambda: guard.targets, lambda: len(guard), lambda: guard[0], lambda: list(guard),
                 lambda: bool(guard), lambda: np.asarray(guard)):
        with pytest.raises(AssertionError, match=MESSAGE):
            read()


def test_sweep_reads_no_test(guarded, tmp_path):
    from genrecedit.runs.sweep import sweep

    result = sweep(guarded("eval.cases=valid"), [0.1, 100.0], [2], tmp_path)
    assert len(result["cells"]) == 2 and result["cases"] == "valid"


@pytest.mark.parametrize("by", ["warm_drop", "exposure"])
def test_calibrate_reads_no_test(guarded, tmp_path, by):
    from genrecedit.runs.calibrate import calibrate

    result = calibrate(guarded("eval.cases=valid"), 0.5, tmp_path, by=by, lam_min=0.1, lam_max=100.0, steps=1)
    assert len(result["trials"]) >= 1
    assert json.loads((tmp_path / "calibrate.json").read_text())["n_cases"] == result["n_cases"]


@pytest.mark.parametrize("by", ["warm_drop", "exposure"])
def test_the_refit_inside_edit_run_reads_no_test(guarded, tmp_path, by):
    from genrecedit.runs.edit import edit_run

    # eval.cases stays "test" (the shipped edit's setting): the re-fit must still decode validation only
    run = guarded("edit.lam=10", f"edit.refit={by}", "edit.refit_bound=0.5")
    try:
        _, report = edit_run(run, tmp_path)
    except ConfigError as err:  # no λ in range kept the bound: the search still ran, on validation only
        assert "no λ up to" in str(err)
        assert (tmp_path / "calibrate.json").exists()
        return
    saved = json.loads((tmp_path / "edit_report.json").read_text())
    assert saved["refit"]["by"] == by and report.n_items > 0


def test_the_experiments_selection_reads_no_test(guarded, tmp_path):
    from genrecedit.experiments import cells as units

    run = guarded()
    valid_run = units.variant(run, cases="valid", max_cases=30)
    picked = units.selection(units.CellCache(tmp_path, run), valid_run, [0.1, 100.0], [2], 0.05,
                             tmp_path / "selection")
    assert picked["chosen"]["lam"] in (0.1, 100.0) and picked["cases"] == "valid"


def test_selection_refuses_knowledge_that_reads_test(guarded, tmp_path):
    """The upper-bound source is the test cases' own histories: it can never pick λ or n."""
    from genrecedit.runs.calibrate import calibrate
    from genrecedit.runs.sweep import sweep

    run = guarded("eval.cases=valid", "knowledge.source=upper_bound")
    with pytest.raises(ConfigError, match="upper_bound"):
        sweep(run, [1.0], [2], tmp_path)
    with pytest.raises(ConfigError, match="upper_bound"):
        calibrate(run, 0.5, tmp_path, lam_min=0.1, lam_max=100.0, steps=0)
