"""Re-fitting λ by cold exposure: the search finds the crossing, exposure counts warm cases only, and a run's
calibration decodes validation cases with the knowledge the shipped edit learns from."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from genrecedit.errors import ConfigError
from genrecedit.evaluation.report import EvalResult
from genrecedit.runs.backbone import load_run
from genrecedit.runs.calibrate import calibrate, from_sweep, search_lam, taught_cases
from genrecedit.runs.edit import build_requests


@settings(max_examples=60, deadline=None)
@given(st.floats(-2.0, 6.0), st.integers(0, 8))
def test_search_returns_the_smallest_lambda_within_target(log_threshold, steps):
    threshold = 10.0 ** log_threshold  # exposure 1.0 below it, 0.0 at or above it: a monotone step
    lam, tried = search_lam(lambda lam: 0.0 if lam >= threshold else 1.0, 0.5, 1.0, 1e4, steps)
    if threshold > 1e4:
        assert lam is None and len(tried) == 1  # even λ max exceeds the target: nothing else is tried
        return
    if threshold <= 1.0:
        assert lam == 1.0 and len(tried) == 2
        return
    assert threshold <= lam <= threshold * 1e4 ** (1 / 2 ** steps) * (1 + 1e-9)
    assert len(tried) == steps + 2
    assert lam == min(x for x, v in tried if v <= 0.5)


def test_search_answers_a_measured_lambda_when_the_curve_is_not_monotone():
    values = {1.0: 0.9, 100.0: 0.1}
    lam, tried = search_lam(lambda lam: values.get(lam, 0.2 if lam < 5 else 0.9), 0.15, 1.0, 100.0, 3)
    assert dict(tried)[lam] <= 0.15


@pytest.mark.parametrize("lo,hi,steps", [(10.0, 10.0, 2), (0.0, 10.0, 2), (1.0, 10.0, -1)])
def test_search_refuses_a_bad_bracket(lo, hi, steps):
    with pytest.raises(ConfigError):
        search_lam(lambda lam: 0.0, 0.1, lo, hi, steps)


def test_cold_exposure_counts_cold_slots_on_warm_cases_only():
    cold_share = np.array([[0.0, 0.2], [0.1, 0.4], [1.0, 1.0]])  # the third case is cold: not counted
    result = EvalResult((5, 10), np.zeros(3, np.int64), np.zeros((3, 0), np.int64), 1 - cold_share, cold_share,
                        np.array([False, False, True]))
    assert result.cold_exposure(10) == pytest.approx(0.3)
    assert result.cold_exposure(5) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        result.cold_exposure(20)


def test_targets_come_from_the_sweeps_choice():
    swept = {"chosen": {"lam": 1500.0, "n": 3, "cold_exposure": 0.04}, "max_warm_drop": 0.05}
    assert from_sweep(swept, "exposure") == (0.04, 1500.0, 3)
    assert from_sweep(swept, "warm_drop") == (0.05, 1500.0, 3)
    with pytest.raises(ConfigError, match="chose no cell"):
        from_sweep({"chosen": None}, "warm_drop")
    with pytest.raises(ConfigError, match="predates"):
        from_sweep({"chosen": {"lam": 1.0, "n": 3}}, "exposure")
    with pytest.raises(ConfigError, match="calibrate by"):
        from_sweep(swept, "recall")


def test_calibration_decodes_validation_with_the_shipped_knowledge(tiny_run, tmp_path):
    over = ["knowledge.source=observed", "knowledge.histories_per_item=50", "eval.max_cases=40",
            "eval.trigger=preserve"]
    run = load_run(tiny_run, over + ["eval.cases=valid"])
    with pytest.raises(ConfigError, match="eval.cases=valid"):
        calibrate(load_run(tiny_run, over), 0.05, tmp_path)
    with pytest.raises(ConfigError, match="share"):
        calibrate(run, 1.5, tmp_path)
    with pytest.raises(ConfigError, match="calibrate by"):
        calibrate(run, 0.05, tmp_path, by="recall")
    with pytest.raises(ConfigError, match="λ min < λ max"):
        calibrate(run, 0.05, tmp_path, lam_min=10.0, lam_max=1.0)
    assert not (tmp_path / "calibrate.json").exists()  # refused before anything is written

    # any items (the tiny run has few cold ones in validation), but not all of them: the cases of the items the
    # shipped edit learns from are requests of it, not scored, and the others are left to score λ on
    items = np.unique(run.prepared.split.valid.targets)[::2]
    ends = calibrate(run, 0.99, tmp_path, by="exposure", lam_min=0.01, lam_max=100.0, steps=2, items=items)
    assert [t["lam"] for t in ends["trials"]] == [100.0, 0.01] and ends["chosen_lam"] == 0.01
    high, low = ends["trials"][0]["cold_exposure"], ends["trials"][1]["cold_exposure"]
    assert low > high  # a weaker regulariser lets the new items take more slots
    # the shipped edit learns from the whole validation period, the selection edit from its first half only
    shipped = len(build_requests(load_run(tiny_run, over), items))
    assert ends["n_requests"] == shipped > len(build_requests(run, items))

    target = (low + high) / 2  # between the ends: the bisection has to run
    result = calibrate(run, target, tmp_path, by="exposure", lam_min=0.01, lam_max=100.0, steps=2, items=items)
    assert json.loads((tmp_path / "calibrate.json").read_text())["chosen_lam"] == result["chosen_lam"]
    tried = {t["lam"]: t["cold_exposure"] for t in result["trials"]}
    assert len(tried) == 4 and all(0.01 <= lam <= 100.0 for lam in tried)
    assert tried[result["chosen_lam"]] <= target
    assert all(v > target for lam, v in tried.items() if lam < result["chosen_lam"])


def test_calibration_by_warm_drop_searches_the_warm_drop(tiny_run, tmp_path):
    over = ["knowledge.source=observed", "knowledge.histories_per_item=50", "eval.max_cases=40",
            "eval.trigger=preserve", "eval.cases=valid"]
    run = load_run(tiny_run, over)
    items = np.unique(run.prepared.split.valid.targets)[::2]
    result = calibrate(run, 0.05, tmp_path, lam_min=0.01, lam_max=100.0, steps=1, items=items)
    assert result["by"] == "warm_drop"
    drops = {t["lam"]: t["warm_ndcg10_drop"] for t in result["trials"]}
    if result["chosen_lam"] is None:
        assert drops[100.0] > 0.05
    else:
        assert drops[result["chosen_lam"]] <= 0.05
        assert all(v > 0.05 for lam, v in drops.items() if lam < result["chosen_lam"])


def test_cli_takes_target_lambda_and_n_from_the_sweep(tiny_run, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from genrecedit.cli import app

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    (run_dir / "sweep.json").unlink(missing_ok=True)
    over = ["-o", "knowledge.source=pseudo+observed", "-o", "eval.max_cases=40", "-o", "eval.trigger=preserve"]
    missing = CliRunner().invoke(app, ["calibrate", "-r", str(run_dir), *over])
    assert missing.exit_code == 2 and "genrecedit sweep" in missing.output
    assert not (run_dir / "calibrate.json").exists()

    (run_dir / "sweep.json").write_text(json.dumps(
        {"chosen": {"lam": 0.5, "n": 7, "cold_exposure": 0.9}, "max_warm_drop": 0.05}))
    ok = CliRunner().invoke(app, ["calibrate", "-r", str(run_dir), "--by", "exposure", "--steps", "0", *over])
    assert ok.exit_code == 0, ok.output
    saved = json.loads((run_dir / "calibrate.json").read_text())
    assert saved["target"] == 0.9 and saved["lam_min"] == 0.5 and saved["lam_max"] == 8.0
    assert saved["chosen_lam"] == 0.5 and "chosen λ = 0.5" in ok.output  # an exposure of 90 % is always within
    assert saved["n"] == 7  # the sweep's chosen n ...
    again = CliRunner().invoke(app, ["calibrate", "-r", str(run_dir), "--by", "exposure", "--steps", "0", *over,
                                     "-o", "knowledge.histories_per_item=3"])
    assert again.exit_code == 0 and json.loads((run_dir / "calibrate.json").read_text())["n"] == 3  # ... unless -o


def test_edit_run_refits_lambda_before_editing(tiny_run, tmp_path, monkeypatch):
    from genrecedit.edit.artifact import EditArtifact
    from genrecedit.runs.edit import ARTIFACT_DIR, edit_run, make_editor
    from genrecedit.runs.evaluate import evaluate_model, evaluation_cases

    over = ["knowledge.source=pseudo+observed", "eval.max_cases=40", "eval.trigger=preserve", "edit.lam=1000"]
    run = load_run(tiny_run, over + ["edit.refit=exposure"])
    items = np.unique(run.prepared.split.valid.targets)[::2]
    _, report = edit_run(run, tmp_path / "a", items)
    saved = json.loads((tmp_path / "a" / "edit_report.json").read_text())
    refit = json.loads((tmp_path / "a" / "calibrate.json").read_text())
    assert saved["refit"]["lam_selected"] == 1000 and saved["refit"]["lam_shipped"] == refit["chosen_lam"] >= 1000
    assert saved["lam"] == refit["chosen_lam"] and saved["refit"]["seconds"] > 0
    assert EditArtifact.load(tmp_path / "a" / ARTIFACT_DIR).batches[-1].meta["lam"] == refit["chosen_lam"]
    # the exposure target is the selection edit's: λ as configured, first-half knowledge, second-half cases, less
    # those the shipped edit learnt from (the very cases the re-fit scores)
    valid = load_run(tiny_run, over + ["eval.cases=valid"])
    artifact, _ = make_editor(valid).edit(build_requests(valid, items), valid.prepared.codes,
                                          valid.prepared.split.item_ids)
    shipped = build_requests(valid, items, observed_from="whole")
    cases = evaluation_cases(valid)
    scored = cases.subset(np.flatnonzero(~taught_cases(cases, shipped)))
    assert refit["n_cases"] == len(scored) and refit["n_cases_excluded"] == len(cases) - len(scored) > 0
    selected, _ = evaluate_model(valid, scored, artifact.schedule("preserve", "cpu"))
    assert refit["target"] == pytest.approx(selected.cold_exposure(10))

    # a bound no λ in range can keep is refused, and no edit is written
    import genrecedit.runs.calibrate as mod

    def nothing_within(run, target, out_dir, by, lam_min, lam_max, steps, items, **kwargs):
        return {"by": by, "target": target, "chosen_lam": None, "trials": []}
    monkeypatch.setattr(mod, "calibrate", nothing_within)
    strict = load_run(tiny_run, over + ["edit.refit=warm_drop"])
    with pytest.raises(ConfigError, match="no λ up to 16000"):
        edit_run(strict, tmp_path / "b", items)
    assert not (tmp_path / "b" / ARTIFACT_DIR).exists() and not (tmp_path / "b" / "edit_report.json").exists()


def test_taught_cases_match_history_and_target_pairs():
    from genrecedit.data.dataset import CaseSet
    from genrecedit.edit.knowledge import EditRequests

    requests = EditRequests(np.array([[-1, 1, 2], [3, 4, 5]]), np.array([7, 8]), np.full(2, -1))
    cases = CaseSet(np.zeros(5, np.int64), np.array([[-1, 1, 2], [-1, 1, 2], [3, 4, 5], [-1, 4, 5], [-1, -1, -1]]),
                    np.array([7, 8, 8, 8, 7]), np.zeros(5))
    # the pair (history, target) counts: the same history for another item, or the item after another, is scored
    assert taught_cases(cases, requests).tolist() == [True, False, True, False, False]


def test_the_refit_scores_no_case_its_edit_learnt_from(tiny_run, tmp_path, monkeypatch):
    """The shipped edit learns from the whole validation period; the λ re-fit leaves out exactly the scored cases
    that are its requests (here: the most recent cases of each taught item), and says so in calibrate.json."""
    import genrecedit.runs.calibrate as mod
    from genrecedit.runs.evaluate import evaluation_cases

    over = ["knowledge.source=observed", "knowledge.histories_per_item=2", "eval.max_cases=60",
            "eval.trigger=preserve", "eval.cases=valid"]
    run = load_run(tiny_run, over)
    items = np.unique(run.prepared.split.valid.targets)[::2]
    shipped = build_requests(run, items, observed_from="whole")
    assert len(shipped) > len(build_requests(run, items))  # the whole period, not the selection's first half
    cases = evaluation_cases(run)
    pairs = list(zip(shipped.histories, shipped.items))
    is_request = np.array([any(t == i and np.array_equal(h, r) for r, i in pairs)
                           for h, t in zip(cases.histories, cases.targets)])
    assert 0 < is_request.sum() < len(cases)
    assert np.isin(cases.targets[is_request], items).all()  # with observed knowledge: cases of the taught items

    scored: list = []

    def spy(run_, cases_, *args, **kwargs):
        scored.append(cases_)
        return evaluate_model(run_, cases_, *args, **kwargs)
    evaluate_model = mod.evaluate_model
    monkeypatch.setattr(mod, "evaluate_model", spy)
    result = calibrate(run, 0.5, tmp_path, by="exposure", lam_min=0.1, lam_max=100.0, steps=0, items=items)
    saved = json.loads((tmp_path / "calibrate.json").read_text())
    assert saved["n_cases_excluded"] == result["n_cases_excluded"] == int(is_request.sum())
    assert saved["n_cases"] == len(cases) - int(is_request.sum()) and "requests" in saved["excluded_why"]
    assert len(scored) == 1 + len(result["trials"])  # the base and every λ tried, all on the same cases
    kept = cases.subset(np.flatnonzero(~is_request))
    for c in scored:
        assert np.array_equal(c.histories, kept.histories) and np.array_equal(c.targets, kept.targets)
