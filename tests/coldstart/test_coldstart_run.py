"""`genrecedit coldstart` on a tiny trained run: selection reads validation only; the report scores the chosen prior
and every baseline on the same test cases, with exposure and paired intervals."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from genrecedit.coldstart.exposure import exposure
from genrecedit.runs.backbone import load_run
from genrecedit.runs.coldstart import Bounds, ColdstartSpec, InsertionGrid, PriorGrid, coldstart, select_coldstart
from no_test_split import without_test

SMALL = ColdstartSpec(grid=PriorGrid(scope=(0, 1), recent=(1,), threshold=(0.0, 0.5), temperature=(0.1,),
                                     budget=(0.1, 0.5), novel_budget=(None,), head=(0, 2)),
                      bounds=Bounds(max_warm_drop=1.0, max_item_share=1.0), valid_max_cases=None, slots=(1, 3),
                      recent=(1, 2))


def test_selection_never_reads_the_test_split(tiny_run):
    run = load_run(tiny_run)
    guarded = without_test(run)
    result = select_coldstart(guarded, SMALL, progress=False)
    assert result["cases"] == "valid" and result["n_cases"] == len(run.prepared.split.valid)
    assert len(result["cells"]) == 16  # 8 mixtures, each with head 0 and 2
    assert {c["prior"]["head"] for c in result["cells"]} == {0, 2}
    # bounds wide open: per stratum the best cell wins if it beats the unedited beams there
    chosen = result["chosen"]
    for name in ("rest", "novel"):
        cells = [c for c in result["cells"] if name in c["strata"]]
        best = max(cells, key=lambda c: c["strata"][name]["ndcg"], default=None)
        beats = best is not None and best["strata"][name]["ndcg"] > best["strata"][name]["base_ndcg"]
        if name == "novel":
            assert chosen is None or chosen["novel"] == ({**best["prior"]} if beats else {**chosen["novel"],
                                                                                         "enabled": False})
        elif chosen is not None:
            assert chosen["novel_only"] == (not beats)
            if beats:
                assert {k: v for k, v in chosen.items() if k not in ("novel", "novel_only")} == best["prior"]
    if chosen is not None:  # the two settings together, scored on the same validation cases
        assert result["chosen_strata"].keys() <= {"rest", "novel"}
    # one setting for every history: the best cell overall
    flat = select_coldstart(guarded, dataclasses.replace(SMALL, bounds=dataclasses.replace(SMALL.bounds,
                                                                                             stratified=False)),
                            progress=False)
    best = max(flat["cells"], key=lambda c: c["metrics"]["overall"]["ndcg@10"])
    beats = best["metrics"]["overall"]["ndcg@10"] > flat["base"]["overall"]["ndcg@10"]
    assert flat["chosen"] == (best["prior"] if beats else None)
    assert {c["s"] for c in result["baselines"]["reserved_slots"]["cells"]} == {1, 3}


def test_each_stratum_takes_its_best_cell_within_its_own_bounds():
    from genrecedit.runs.coldstart_bounds import choose_strata

    def cell(budget: float, rest: tuple, novel: tuple) -> dict:
        def row(ndcg, drop, share):
            return {"ndcg": ndcg, "base_ndcg": 0.10, "warm_drop": drop, "warm_drop_upper": drop + 0.01,
                    "max_item_share": share}
        return {"prior": {"budget": budget, "head": 0}, "strata": {"rest": row(*rest), "novel": row(*novel)}}

    cells = [cell(0.1, (0.11, 0.00, 0.01), (0.105, 0.00, 0.01)),
             cell(0.2, (0.12, 0.015, 0.01), (0.12, 0.10, 0.01)),   # novel: drop too large
             cell(0.3, (0.13, 0.025, 0.01), (0.13, 0.00, 0.20)),   # rest: upper end past .03; novel: exposure
             cell(0.4, (0.14, 0.00, 0.01), (0.11, 0.01, 0.01))]
    chosen = choose_strata(cells, Bounds())
    assert chosen["budget"] == 0.4 and chosen["novel"]["budget"] == 0.4 and not chosen["novel_only"]
    chosen = choose_strata(cells[:3], Bounds())
    assert chosen["budget"] == 0.2 and chosen["novel"]["budget"] == 0.1
    assert choose_strata(cells[:3], Bounds(upper=False))["budget"] == 0.3  # held at the estimate only
    # a stratum with no admissible cell keeps the beam's lists
    worse = [cell(0.1, (0.09, 0.0, 0.01), (0.12, 0.0, 0.01))]
    only = choose_strata(worse, Bounds())
    assert only["novel_only"] and only["novel"]["budget"] == 0.1 and only["enabled"]
    none_novel = choose_strata([cell(0.1, (0.12, 0.0, 0.01), (0.09, 0.0, 0.01))], Bounds())
    assert not none_novel["novel_only"] and none_novel["novel"]["enabled"] is False
    assert choose_strata([cell(0.1, (0.09, 0.0, 0.01), (0.09, 0.0, 0.01))], Bounds()) is None


def test_allocation_spends_the_warm_bound_where_the_backbone_ranks_warm_items_poorly():
    from genrecedit.runs.coldstart_bounds import allocate_strata

    def row(ndcg, drop, n, base_warm, base=0.10):
        return {"ndcg": ndcg, "base_ndcg": base, "warm_drop": drop, "warm_drop_upper": drop + 0.01,
                "max_item_share": 0.01, "n_cases": n, "base_warm_ndcg": base_warm}

    def cell(budget, rest, novel):
        return {"prior": {"budget": budget, "head": 0},
                "strata": {"rest": row(*rest, n=900, base_warm=0.02), "novel": row(*novel, n=100, base_warm=0.002)}}

    cells = [cell(0.1, (0.105, 0.005), (0.101, 0.00)),
             cell(0.2, (0.11, 0.02), (0.20, 0.20)),    # novel: a 21 % upper end, but its warm NDCG weighs little
             cell(0.3, (0.12, 0.05), (0.102, 0.00))]   # rest: past the bound on its own
    # share 0.1 of warm cases end with a new item: the novel stratum holds
    # 0.1·0.002 / (0.9·0.02 + 0.1·0.002) ≈ 1.1 % of the warm NDCG, so (rest 0.1, novel 0.2) plans
    # 0.989·0.015 + 0.011·0.21 ≈ 1.7 % and is the best pair
    chosen = allocate_strata(cells, Bounds(), share=0.1)
    assert chosen["budget"] == 0.1 and chosen["novel"]["budget"] == 0.2
    # per-stratum bounds refuse the same novel cell
    assert choose_strata_budget(cells) == (0.2, 0.3)
    # a larger planned share makes the novel stratum's drop count more: at 0.9 it weighs ≈ 50 %, 0.5·0.21 > 3 %
    chosen = allocate_strata(cells, Bounds(), share=0.9)
    assert chosen["novel"]["budget"] != 0.2
    # the estimate instead of the upper end lets the rest stratum spend more
    chosen = allocate_strata([cell(0.4, (0.13, 0.025), (0.09, 0.0))], Bounds(upper=False), share=0.1)
    assert chosen["budget"] == 0.4 and chosen["novel"]["enabled"] is False
    assert allocate_strata([cell(0.4, (0.13, 0.025), (0.09, 0.0))], Bounds(), share=0.1) is None


def choose_strata_budget(cells):
    from genrecedit.runs.coldstart_bounds import choose_strata

    chosen = choose_strata(cells, Bounds())
    return chosen["budget"], chosen["novel"]["budget"]


def test_strata_rows_measure_each_kind_of_history_on_its_own_cases():
    from genrecedit.evaluation.report import evaluate_topk
    from genrecedit.runs.coldstart_bounds import strata_masks, strata_rows

    rng = np.random.default_rng(1)
    n, new = 1000, np.array([40, 41])
    novel = rng.random(n) < 0.2
    histories = np.stack([rng.integers(0, 40, n), np.where(novel, 40, rng.integers(0, 40, n))], 1)
    targets = rng.integers(0, 40, n)
    base_lists = np.stack([np.r_[t, rng.permutation(np.setdiff1d(np.arange(40), [t]))[:9]] for t in targets])
    moved = base_lists.copy()
    lost = novel & (rng.random(n) < 0.5)
    moved[lost, 0] = 41  # the new item 41 takes the first slot of half the novel stratum, whose targets drop out
    warm, cold = np.ones(42, bool), np.zeros(n, bool)
    base = evaluate_topk(base_lists, targets, cold, warm, None, (10,))
    res = evaluate_topk(moved, targets, cold, warm, None, (10,))
    rows = strata_rows(res, base, moved, new, strata_masks(histories, new))
    assert rows["rest"]["warm_drop"] == 0.0 and rows["rest"]["max_item_share"] == 0.0
    assert rows["novel"]["warm_drop"] == pytest.approx(lost[novel].mean())
    assert rows["novel"]["max_item_share"] == pytest.approx(lost[novel].mean())
    assert rows["novel"]["n_cases"] == novel.sum() and rows["rest"]["n_cases"] == n - novel.sum()
    assert rows["novel"]["warm_drop_upper"] > rows["novel"]["warm_drop"]


def test_the_prior_alone_selects_on_the_whole_validation_period(tiny_run):
    """With observed knowledge configured, an edit selects on the period's second half (its first half is the
    knowledge); the prior alone reads no interaction, so it selects on all of it."""
    from genrecedit.runs.coldstart import selection_cases

    run = load_run(tiny_run, ["knowledge.source=observed"])
    valid = run.prepared.split.valid
    assert len(selection_cases(run, None, whole=True)) == len(valid)
    assert len(selection_cases(run, None, whole=False)) < len(valid)


def test_the_warm_drop_is_held_at_the_latest_mix_and_at_its_intervals_upper_end():
    """Warm cases whose history ends with a new item lose their target; those cases grow late in the period. The
    planned drop mixes the strata at the latest window's share (not the period's average), its interval's upper end
    lies above the estimate, and a bound between the two is met only when held at the estimate."""
    from genrecedit.data.dataset import CaseSet
    from genrecedit.evaluation.report import evaluate_topk
    from genrecedit.runs.coldstart_bounds import WarmPlan, _admissible

    rng = np.random.default_rng(0)
    n, new = 2000, np.array([40, 41])
    times = np.arange(n, dtype=float)
    novel = rng.random(n) < np.where(times >= 0.8 * n, 0.5, 0.1)  # 10 % of histories end new, 50 % in the last fifth
    histories = np.stack([rng.integers(0, 40, n), np.where(novel, 40, rng.integers(0, 40, n))], 1)
    targets = rng.integers(0, 40, n)
    base_lists = np.stack([np.r_[t, rng.permutation(np.setdiff1d(np.arange(40), [t]))[:9]] for t in targets])
    moved = base_lists.copy()
    lost = novel & (rng.random(n) < 0.3)  # 30 % of the novel stratum loses its target
    moved[lost, 0] = (targets[lost] + 1) % 40
    warm, cold = np.ones(42, bool), np.zeros(n, bool)
    base = evaluate_topk(base_lists, targets, cold, warm, None, (10,))
    res = evaluate_topk(moved, targets, cold, warm, None, (10,))
    cases = CaseSet(np.arange(n), histories, targets, times)

    plan = WarmPlan.of(cases, new, cold, window=0.2)
    assert plan.share == pytest.approx(novel[times >= np.quantile(times, 0.8)].mean())
    assert WarmPlan.of(cases, new, cold, window=None).share == pytest.approx(novel.mean())
    point, upper = plan.drop(res, base)
    # base NDCG is 1 everywhere: the drop is the planned share times the novel stratum's loss
    assert point == pytest.approx(plan.share * lost[novel].mean())
    average, _ = WarmPlan.of(cases, new, cold, window=None).drop(res, base)
    assert average == pytest.approx(lost.mean()) and point > 2 * average
    assert upper > point + 0.005
    row = {"warm_drop_planned": [point, upper], "exposure": {"max_item_share": 0.0}}
    at = Bounds(max_warm_drop=(point + upper) / 2, max_item_share=1.0)
    assert not _admissible(row, at) and _admissible(row, dataclasses.replace(at, upper=False))
    assert plan.drop(res, base, below=point / 2) == (pytest.approx(point), None)  # no interval past the bound
    assert plan.drop(base, base) == (0.0, 0.0)
    with pytest.raises(Exception, match="plan_window"):
        WarmPlan.of(cases, new, cold, window=1.5)


def test_tight_bounds_choose_nothing_and_the_report_says_so(tiny_run, tmp_path):
    run = load_run(tiny_run)
    spec = dataclasses.replace(SMALL, bounds=Bounds(max_warm_drop=-1.0, max_item_share=0.0))
    report = coldstart(run, tmp_path, spec, echo=lambda *_: None)
    assert report["chosen_prior"] is None and "content prior (chosen)" not in report["systems"]


def test_the_report_scores_every_system_on_the_same_test_cases(tiny_run, tmp_path):
    run = load_run(tiny_run)
    # a budget of .5 with an open gate: the synthetic run's new items then win some validation cases
    spec = dataclasses.replace(SMALL, grid=PriorGrid(scope=(0,), recent=(1,), threshold=(-1.0,), temperature=(1.0,),
                                                     budget=(0.5, 0.9), novel_budget=(None,)))
    report = coldstart(run, tmp_path, spec, echo=lambda *_: None)
    on_disk = json.loads((tmp_path / "coldstart.json").read_text())
    assert on_disk["systems"].keys() == report["systems"].keys()
    names = list(report["systems"])
    assert names[0] == "TIGER"
    assert ("content prior (chosen)" in names) == (report["chosen_prior"] is not None)
    assert {"retriever (recent 1)", "retriever (recent 2)"} <= set(names)
    assert any(n.startswith("reserved slots") for n in names) and any(n.startswith("dense re-rank") for n in names)
    n_test = len(run.prepared.split.test)
    for row in report["systems"].values():
        assert row["overall"]["n_cases"] == n_test
        assert set(row["exposure"]) >= {"new_item_slot_share", "max_item_share", "unreached_items"}
        assert "overall_ndcg@10" in row["vs_base"]
    assert report["systems"]["TIGER"]["vs_base"]["overall_ndcg@10"] == [0.0, 0.0, 0.0]
    # the content-only retriever fills every slot it can with new items
    n_new = int((~run.prepared.split.warm).sum())
    assert report["systems"]["retriever (recent 1)"]["exposure"]["new_item_slot_share"] == pytest.approx(
        (run.prepared.split.test.history_lengths() > 0).mean() * min(n_new, 10) / 10)
    assert (tmp_path / "coldstart_selection.json").exists() and (tmp_path / "coldstart_metrics.md").exists()


def test_exposure_counts_slots_lists_and_unreached_items():
    topk = np.array([[5, 1, 6, -1], [5, 2, 3, 4], [0, 1, 2, 3]])
    out = exposure(topk, np.array([5, 6, 7]), k=3)
    assert out["new_item_slot_share"] == pytest.approx(3 / 9)
    assert out["max_item_share"] == pytest.approx(2 / 3) and out["max_item"] == 5
    assert out["unreached_items"] == 1 and out["reached_items"] == 2  # 7 is in no list; 4 is past the cut


def test_evaluate_scores_the_runs_prior_with_exposure(tiny_run, tmp_path):
    """`genrecedit evaluate` on a run whose config enables the prior reports TIGER and TIGER + prior, with the new
    items' exposure and the paired gain of each over TIGER."""
    import shutil

    from genrecedit.runs.evaluate_report import evaluate_report

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    prior = ["prior.enabled=true", "prior.scope=0", "prior.threshold=-1.0", "prior.temperature=1.0",
             "prior.budget=0.9"]
    text = evaluate_report(run_dir, prior, None, "m")
    assert "TIGER + prior" in text
    saved = json.loads((run_dir / "m_intervals.json").read_text())
    assert set(saved["exposure"]) == {"TIGER", "TIGER + prior"}
    # an open gate and a budget of .9: the prior fills most slots with new items, TIGER leaves them few
    assert saved["exposure"]["TIGER + prior"]["new_item_slot_share"] > saved["exposure"]["TIGER"][
        "new_item_slot_share"]
    assert set(saved["minus_base"]) == {"TIGER + prior"}
    plain = evaluate_report(run_dir, [], None, "plain")
    assert "prior" not in plain and "TIGER + prior" not in json.loads(
        (run_dir / "plain_intervals.json").read_text())["exposure"]


def test_exposure_spreads_per_item_shares_over_the_reached_items():
    topk = np.array([[5, 6], [5, 7], [5, 1], [1, 2]])
    out = exposure(topk, np.array([5, 6, 7, 8]), k=2)
    # item 5 is in 3 of 4 lists, 6 and 7 in 1 each; 8 in none (not counted among the reached)
    assert out["reached_share_quantiles"]["p50"] == pytest.approx(0.25)
    assert out["reached_share_quantiles"]["p99"] == pytest.approx(np.percentile([0.75, 0.25, 0.25], 99))


def test_the_trend_plan_reads_the_shares_line_at_the_middle_of_the_next_period():
    from genrecedit.data.dataset import CaseSet
    from genrecedit.runs.coldstart_bounds import WarmPlan, trend_share

    rng = np.random.default_rng(2)
    n, new = 20000, np.array([40])
    times = np.sort(rng.uniform(0, 100, n))
    novel = rng.random(n) < 0.3 * times / 100  # the share grows from 0 to .3 over the period
    assert trend_share(times, novel) == pytest.approx(0.45, abs=0.02)  # the line at 1.5 periods
    histories = np.stack([np.zeros(n, int), np.where(novel, 40, 1)], 1)
    cases = CaseSet(np.arange(n), histories, np.ones(n, int), times)
    cold = np.zeros(n, bool)
    window = WarmPlan.of(cases, new, cold, 0.2).share
    assert window == pytest.approx(0.27, abs=0.02)  # the latest fifth's mean
    assert WarmPlan.of(cases, new, cold, 0.2, trend=True).share == pytest.approx(0.45, abs=0.02)
    # a falling share never plans below the latest window's
    assert WarmPlan.of(CaseSet(np.arange(n), histories[::-1], np.ones(n, int), times), new, cold, 0.2,
                       trend=True).share == pytest.approx(WarmPlan.of(
                           CaseSet(np.arange(n), histories[::-1], np.ones(n, int), times), new, cold, 0.2).share)


def _cell(bias, overall, cold, upper=0.0, share=0.01, warm_drop=0.0):
    return {"insertion": {"bias": bias}, "metrics": {
        "overall": {"ndcg@10": overall}, "cold": {"recall@10": cold}, "warm_drop": warm_drop,
        "warm_drop_planned": [upper, upper], "exposure": {"max_item_share": share}}}


def test_the_cold_objective_takes_the_most_cold_recall_within_the_bounds_above_the_baselines():
    """Among cells that keep the warm bound (the planned drop's upper end) and the exposure bound and that beat the
    beams, the cold objective takes the most cold recall whose overall NDCG@10 also beats the baselines' floor
    (ties by overall); the overall objective the best overall; with nothing above the floor, the best overall."""
    from genrecedit.errors import ConfigError
    from genrecedit.runs.coldstart import pick_insertion

    cells = [_cell(3.0, 0.030, 0.010),
             _cell(1.0, 0.027, 0.030),
             _cell(0.5, 0.026, 0.030),  # ties on cold: the better overall (1.0) wins
             _cell(0.0, 0.024, 0.035),  # the most cold recall, but not above the floor 0.025
             _cell(-1.0, 0.029, 0.060, upper=0.04),  # breaks the warm bound
             _cell(-2.0, 0.029, 0.070, share=0.2),  # one new item in a fifth of the lists
             _cell(-3.0, 0.019, 0.080)]  # below the beams
    bounds = Bounds(max_warm_drop=0.03, max_item_share=0.05)
    assert pick_insertion(cells, 0.020, bounds, "cold", 0.025)["insertion"]["bias"] == 1.0
    assert pick_insertion(cells, 0.020, bounds, "cold")["insertion"]["bias"] == 0.0  # no floor
    assert pick_insertion(cells, 0.020, bounds, "overall", 0.025)["insertion"]["bias"] == 3.0
    assert pick_insertion(cells, 0.020, bounds, "cold", 0.031)["insertion"]["bias"] == 3.0  # none above the floor
    assert pick_insertion(cells, 0.031, bounds, "cold") is None  # none beats the beams
    with pytest.raises(ConfigError, match="objective"):
        pick_insertion(cells, 0.020, bounds, "recall")


def test_the_baselines_floor_counts_only_baselines_within_the_bounds():
    from genrecedit.runs.coldstart import baseline_floor

    baselines = {"reserved_slots": [{"s": 1, **_cell(0, 0.026, 0.01, warm_drop=0.02)},
                                    {"s": 4, **_cell(0, 0.040, 0.05, warm_drop=0.17)}],
                 "dense_rerank": [_cell(0, 0.050, 0.07, warm_drop=0.01, share=0.3)]}
    assert baseline_floor(baselines, Bounds(max_warm_drop=0.03, max_item_share=0.05)) == 0.026
    assert baseline_floor(baselines, Bounds(max_warm_drop=0.2, max_item_share=0.05)) == 0.040
    assert baseline_floor(baselines, Bounds(max_warm_drop=0.01, max_item_share=0.05)) == -float("inf")


def test_the_recipe_follows_the_objective():
    from genrecedit.runs.coldstart import INSERTION, PRIOR, pick_recipe

    rows = {PRIOR: _cell(0, 0.030, 0.01)["metrics"], INSERTION: _cell(0, 0.028, 0.04)["metrics"]}
    assert pick_recipe(rows, "overall", 0.025) == PRIOR
    assert pick_recipe(rows, "cold", 0.025) == INSERTION
    assert pick_recipe(rows, "cold", 0.029) == PRIOR  # only the prior beats the floor
    assert pick_recipe(rows, "cold", 0.031) == PRIOR  # neither: the better overall
    assert pick_recipe({}, "cold", 0.0) is None


def test_an_unknown_objective_is_refused_before_anything_is_written(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from genrecedit.cli import app

    result = CliRunner().invoke(app, ["coldstart", "-r", str(tiny_run), "--objective", "recall",
                                      "--out", str(tmp_path / "cs")])
    assert result.exit_code != 0 and "objective" in result.output
    assert not (tmp_path / "cs").exists()


def test_an_insertion_window_outside_the_period_is_refused_before_anything_is_written(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from genrecedit.cli import app

    result = CliRunner().invoke(app, ["coldstart", "-r", str(tiny_run), "--insertion-window", "0",
                                      "--no-spend-rerank", "--out", str(tmp_path / "cs")])
    assert result.exit_code != 0 and "window" in result.output
    assert not (tmp_path / "cs").exists()


def test_the_rule_and_cap_options_set_the_insertion_grid_coldstart_selects_with(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import genrecedit.runs.backbone as backbone
    import genrecedit.runs.coldstart as cs
    from genrecedit.cli import app

    seen = []
    monkeypatch.setattr(backbone, "load_run", lambda *a, **k: None)
    monkeypatch.setattr(cs, "coldstart", lambda run, out, spec, *a, **k: seen.append(spec.insertion.rules) or
                        {"recipe": None})
    for args, rules in (([], InsertionGrid().rules), (["--no-spend-rerank"], ((1.0, False),)),
                        (["--insertion-window", "0.5"], ((0.5, True),)),
                        (["--insertion-window", "0.5", "--spend-rerank"], ((0.5, True),))):
        result = CliRunner().invoke(app, ["coldstart", "-r", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
        assert seen[-1] == rules
    caps = []  # the exposure cap: on unless --no-exposure-cap
    monkeypatch.setattr(cs, "coldstart", lambda run, out, spec, *a, **k: caps.append(spec.insertion.cap) or
                        {"recipe": None})
    for args in ([], ["--no-exposure-cap"]):
        assert CliRunner().invoke(app, ["coldstart", "-r", str(tmp_path), *args]).exit_code == 0
    assert caps == [True, False]


def test_the_valid_users_option_reaches_the_spec_and_a_bad_one_exits_with_an_error(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import genrecedit.runs.backbone as backbone
    import genrecedit.runs.coldstart as cs
    from genrecedit.cli import app

    seen = []
    monkeypatch.setattr(backbone, "load_run", lambda *a, **k: None)
    monkeypatch.setattr(cs, "coldstart", lambda run, out, spec, *a, **k: seen.append(spec.valid_users) or
                        {"recipe": None})
    for args in ([], ["--valid-users", "all"]):
        assert CliRunner().invoke(app, ["coldstart", "-r", str(tmp_path), *args]).exit_code == 0
    assert seen == ["test", "all"]
    result = CliRunner().invoke(app, ["coldstart", "-r", str(tmp_path), "--valid-users", "everyone"])
    assert result.exit_code != 0 and "valid_users" in result.output and len(seen) == 2
