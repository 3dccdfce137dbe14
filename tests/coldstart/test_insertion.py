"""Calibrated insertion: proposals, features, the merged ranking, the cross-fit that chooses the margin on lists no
model was fitted on, and its place in `genrecedit coldstart`."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from genrecedit.coldstart import insertion as ins
from genrecedit.coldstart.insertion import (CalibratedInsertion, InsertionConfig, LogOdds, NEW_FEATURES,
                                            POPULARITY_FEATURES, Proposals, RERANK_FEATURES, WARM_FEATURES,
                                            cross_fitted, propose)
from genrecedit.errors import ConfigError
from genrecedit.model.beam import Beams
from genrecedit.runs.backbone import load_run
from genrecedit.runs.coldstart import Bounds, ColdstartSpec, InsertionGrid, PriorGrid, coldstart
from no_test_split import without_test

# 6 items, 2 SID codes each; items 4 and 5 are new. Item 4's text is item 0's, item 5's is item 1's.
EMB = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [1, 0.05, 0], [0.05, 1, 0]], np.float32)
CODES = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [2, 0]])
NEW = np.array([4, 5])


def _beams(items, scores) -> Beams:
    items = torch.tensor(items)
    return Beams(items, torch.tensor(scores, dtype=torch.float32), torch.as_tensor(CODES)[items.clamp(min=0)])


def test_proposals_follow_the_text_and_never_repeat_the_history():
    histories = np.array([[-1, 0], [-1, 1], [0, 4]])  # the last ends with new item 4: 4 is not proposed again
    beams = _beams([[0, 1, 2], [1, 2, 3], [0, 1, -1]], [[-1, -2, -3], [-1, -2, -3], [-1, -2, -np.inf]])
    p = propose(EMB, CODES, NEW, histories, beams, recent=1, candidates=2)
    assert p.items.tolist() == [[4, 5], [5, 4], [5, -1]]
    assert p.features.shape == (3, 2, len(NEW_FEATURES)) and p.beam_features.shape == (3, 3, len(WARM_FEATURES))
    assert p.beam_content.shape == (3, 3, len(RERANK_FEATURES))
    f = dict(zip(NEW_FEATURES, np.moveaxis(p.features, -1, 0)))
    assert f["sim"][0, 0] == pytest.approx(1 / np.sqrt(1 + 0.05 ** 2), abs=1e-5)
    assert f["first"][:, 0].tolist() == [1, 1, 1] and f["novel_last"][:, 0].tolist() == [0, 0, 1]
    # item 4 (codes 0, 2) shares its first code with beam items 0 and 1 of row 0: their mass, relative to the beam's
    mass = np.logaddexp.reduce([-1.0, -2.0, -3.0])
    assert f["subtree_mass_1"][0, 0] == pytest.approx(np.logaddexp(-1.0, -2.0) - mass)
    assert f["subtree_mass_2"][0, 0] == pytest.approx(ins.FLOOR - mass)  # no beam item under (0, 2)
    w = dict(zip(WARM_FEATURES + RERANK_FEATURES, np.moveaxis(p.warm_x(InsertionConfig(rerank=True)), -1, 0)))
    assert w["score"][2, 2] == ins.FLOOR and w["log_rank"][0].tolist() == pytest.approx(np.log1p([0, 1, 2]))
    # the beam items' own similarity to the history's content: row 0's content is item 0, row 2's is new item 4
    assert w["sim"][0].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    assert w["sim"][2, 0] == pytest.approx(1 / np.sqrt(1 + 0.05 ** 2), abs=1e-5) and w["sim"][2, 2] == -1.0
    assert w["sim_gap"][0].tolist() == pytest.approx([0.0, -1.0, -1.0], abs=1e-6)
    assert w["novel_last_sim"][0].tolist() == [0, 0, 0] and w["novel_last_sim"][2, 0] == pytest.approx(w["sim"][2, 0])
    none = propose(EMB, CODES, np.array([], int), histories, beams, recent=1, candidates=2)  # no new item at all
    assert none.items.shape == (3, 0) and none.beam_content.shape == p.beam_content.shape
    np.testing.assert_array_equal(none.beam_content[..., 0], p.beam_content[..., 0])
    # each beam leads with an item of its history; row 2's third slot is empty
    assert w["seen"].tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 0]]


def _model(new_coef: float, bias: float = 0.0, rerank: bool = False, sim_coef: float = 0.0) -> CalibratedInsertion:
    """Log-odds: a proposal's = new_coef · similarity; a beam item's = its log-probability (+ sim_coef · its own
    similarity when ``rerank``)."""
    n_new, n_warm = len(NEW_FEATURES), len(ins.warm_features(InsertionConfig(rerank=rerank)))
    new = LogOdds([0.0] * n_new, [1.0] * n_new, [new_coef] + [0.0] * (n_new - 1), 0.0)
    coef = [1.0] + [0.0] * (n_warm - 1)
    if rerank:
        coef[len(WARM_FEATURES)] = sim_coef
    warm = LogOdds([0.0] * n_warm, [1.0] * n_warm, coef, 0.0)
    return CalibratedInsertion(InsertionConfig(bias=bias, rerank=rerank), new, warm)


def _proposals(items, sims, beam_items, beam_scores, beam_sims=None) -> Proposals:
    f = np.zeros(np.shape(items) + (len(NEW_FEATURES),))
    f[..., 0] = sims
    w = np.zeros(np.shape(beam_items) + (len(WARM_FEATURES),))
    w[..., 0] = beam_scores
    content = np.zeros(np.shape(beam_items) + (len(RERANK_FEATURES),))
    if beam_sims is not None:
        content[..., 0] = beam_sims
    return Proposals(np.array(items), f, np.array(beam_items), w, content)


def test_a_proposal_goes_above_the_first_beam_item_it_beats_by_the_margin_and_the_beam_keeps_its_order():
    # the beam's log-odds are not sorted (-1, -3, -2): made non-increasing, the beam's order stays
    p = _proposals([[7, 8]], [[-1.5, -9.0]], [[1, 2, 3]], [[-1.0, -3.0, -2.0]])
    items, keys = _model(1.0).rank(p, 4)
    assert items.tolist() == [[1, 7, 2, 3]] and np.all(np.diff(keys) <= 0)
    assert _model(1.0).rank(p, 4, bias=2.0)[0].tolist() == [[1, 2, 3, 7]]  # -3.5 beats no beam item (-1, -3, -3)
    assert _model(1.0).rank(p, 3, bias=10.0)[0].tolist() == [[1, 2, 3]]  # a wide margin: the beam's list
    assert _model(1.0).rank(p, 5, bias=-20.0)[0].tolist() == [[7, 8, 1, 2, 3]]


def test_a_reranking_warm_model_reorders_the_beam_by_its_log_odds_and_reads_its_own_features_only():
    # log-odds = score + 4 · sim: item 3 (score -2, sim 1) overtakes items 1 and 2; proposal 7 (1.8 - 3) goes between
    p = _proposals([[7]], [[1.8]], [[1, 2, 3]], [[-1.0, -1.5, -2.0]], beam_sims=[[0.0, 0.0, 1.0]])
    assert _model(1.0, bias=3.0, rerank=True, sim_coef=4.0).rank(p, 4)[0].tolist() == [[3, 1, 7, 2]]
    # the keep-order model reads no content feature: item 3's similarity leaves it last
    assert _model(1.0, bias=3.0).rank(p, 4)[0].tolist() == [[1, 7, 2, 3]]
    model = _model(1.0, bias=3.0, rerank=True, sim_coef=4.0)
    data = json.loads(json.dumps(model.to_dict()))
    assert data["warm_features"] == list(WARM_FEATURES + RERANK_FEATURES)
    np.testing.assert_array_equal(CalibratedInsertion.of(data).rank(p, 4)[0], [[3, 1, 7, 2]])
    with pytest.raises(ConfigError, match="other features"):  # a re-ranking model saved with the old feature list
        CalibratedInsertion.of({**data, "warm_features": list(WARM_FEATURES)})


def test_a_proposal_already_in_the_beam_is_counted_once_and_empty_slots_stay_empty():
    p = _proposals([[2, -1]], [[5.0, 0.0]], [[1, 2, -1]], [[-1.0, -3.0, -50.0]])
    items, keys = _model(1.0).rank(p, 4)
    assert items.tolist() == [[1, 2, -1, -1]] and np.isneginf(keys[0, 2:]).all()


def test_fit_learns_which_proposals_come_next_and_round_trips():
    rng = np.random.default_rng(0)
    n = 400
    sims = rng.uniform(size=(n, 3))
    items = np.tile([10, 11, 12], (n, 1))
    beam_scores = np.sort(rng.normal(-3, 1, size=(n, 4)), 1)[:, ::-1]
    beam_items = np.tile([0, 1, 2, 3], (n, 1))
    targets = np.where(sims[:, 0] > 0.8, 10, np.where(rng.uniform(size=n) < 0.3, 0, 3))
    p = _proposals(items, sims, beam_items, beam_scores)
    model = CalibratedInsertion.fit(p, targets, InsertionConfig(bias=0.0))
    logits = model.new_odds(p.features)
    assert logits[sims[:, 0] > 0.8, 0].mean() > logits[sims[:, 0] < 0.5, 0].mean() + 1
    again = CalibratedInsertion.of(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_array_equal(again.rank(p, 5)[0], model.rank(p, 5)[0])
    with pytest.raises(ConfigError, match="other features"):
        CalibratedInsertion.of({**model.to_dict(), "new_features": ["sim"]})
    with pytest.raises(ConfigError, match="none of one kind"):
        CalibratedInsertion.fit(p, np.full(n, 99), InsertionConfig())
    with pytest.raises(ConfigError):
        InsertionConfig(candidates=0)


def test_the_margin_is_chosen_on_lists_each_ranked_by_a_model_fitted_on_the_other_half(monkeypatch):
    n = 10
    times = np.array([5, 1, 9, 3, 7, 2, 8, 4, 6, 0], float)
    p = _proposals(np.tile([10], (n, 1)), np.arange(n)[:, None] / n, np.tile([0], (n, 1)), np.zeros((n, 1)))
    fitted_on = []

    def fake_fit(proposals, targets, cfg, counts=None):
        fitted_on.append(set(proposals.features[:, 0, 0].round(3)))
        return _model(1.0)

    monkeypatch.setattr(CalibratedInsertion, "fit", staticmethod(fake_fit))
    lists = cross_fitted(p, np.zeros(n, int), times, InsertionConfig(), (0.0, 1.0), 2)
    early = set((np.arange(n)[times < 5] / n).round(3))
    later = set((np.arange(n)[times >= 5] / n).round(3))
    assert fitted_on == [early, later]  # the later half ranked by the early half's model, then the reverse
    assert set(lists) == {0.0, 1.0} and all(v.shape == (n, 2) and (v >= 0).all() for v in lists.values())


def test_a_popularity_warm_model_reads_the_counts_it_was_fitted_with_and_keeps_them():
    """Warm log-odds = the beam item's log(1 + recent count): the beam is ordered by those counts; an item the
    counts do not cover (added later) and an empty slot count 0; the counts travel with the saved model."""
    cfg = InsertionConfig(bias=1e6, rerank=True, popularity=True)
    assert ins.warm_features(cfg) == WARM_FEATURES + RERANK_FEATURES + POPULARITY_FEATURES
    n_warm = len(ins.warm_features(cfg))
    coef = [0.0] * n_warm
    coef[-1] = 1.0  # "log_count_recent"
    new = LogOdds([0.0] * len(NEW_FEATURES), [1.0] * len(NEW_FEATURES), [0.0] * len(NEW_FEATURES), 0.0)
    counts = np.array([[9, 0], [1, 5], [0, 50], [3, 2]])  # items 0–3; item 6 is beyond them
    model = CalibratedInsertion(cfg, new, LogOdds([0.0] * n_warm, [1.0] * n_warm, coef, 0.0), counts)
    p = _proposals([[7]], [[0.0]], [[0, 1, 2, 6, -1]], [[-1.0, -2.0, -3.0, -4.0, -50.0]])
    x = p.warm_x(cfg, counts)
    np.testing.assert_allclose(x[0, :, -2:], np.log1p([[9, 0], [1, 5], [0, 50], [0, 0], [0, 0]]))
    assert model.rank(p, 4)[0].tolist() == [[2, 1, 0, 6]]
    data = json.loads(json.dumps(model.to_dict()))
    assert data["counts"] == counts.tolist() and data["warm_features"][-2:] == list(POPULARITY_FEATURES)
    again = CalibratedInsertion.of(data)
    np.testing.assert_array_equal(again.counts, counts)
    np.testing.assert_array_equal(again.rank(p, 4)[0], [[2, 1, 0, 6]])
    with pytest.raises(ConfigError, match="interaction counts"):  # saved without its counts
        CalibratedInsertion.of({k: v for k, v in data.items() if k != "counts"})
    with pytest.raises(ConfigError, match="interaction counts"):
        p.warm_x(cfg)
    with pytest.raises(ConfigError, match="rerank"):
        InsertionConfig(popularity=True)
    plain = _model(1.0, rerank=True)  # no popularity: no counts saved, the feature list unchanged
    assert "counts" not in plain.to_dict() and plain.counts is None


def test_fit_with_popularity_learns_from_the_counts_and_keeps_only_them():
    """Item 2, lately popular, is the next item half the time wherever the beam puts it: only its count tells it
    apart, so the popularity model puts it first in every list and the model without counts keeps the beam's top."""
    rng = np.random.default_rng(1)
    n = 600
    beam_items = np.array([rng.permutation(4) for _ in range(n)])  # the beam's order says nothing of item 2
    counts = np.array([[5, 1], [5, 1], [5, 200], [5, 1]])
    targets = np.where(rng.uniform(size=n) < 0.5, 2, rng.integers(0, 4, size=n))
    targets = np.where(rng.uniform(size=n) < 0.1, 10, targets)  # now and then the proposal
    p = _proposals(np.tile([10], (n, 1)), rng.uniform(size=(n, 1)), beam_items, np.tile([-1.0, -2, -3, -4], (n, 1)),
                   beam_sims=np.zeros((n, 4)))
    cfg = InsertionConfig(bias=1e6, rerank=True, popularity=True)
    model = CalibratedInsertion.fit(p, targets, cfg, counts)
    np.testing.assert_array_equal(model.counts, counts)
    assert model.rank(p, 1)[0][:, 0].tolist() == [2] * n  # the lately popular item leads every list
    blind = CalibratedInsertion.fit(p, targets, InsertionConfig(bias=1e6, rerank=True), counts)
    assert blind.counts is None
    np.testing.assert_array_equal(blind.rank(p, 1)[0][:, 0], beam_items[:, 0])
    with pytest.raises(ConfigError, match="interaction counts"):
        CalibratedInsertion.fit(p, targets, cfg)


@pytest.fixture(scope="module")
def sequel_run(tmp_path_factory, sequel_dir, tiny_overrides):
    """A tiny run whose new items are sequels played right after their originals, in validation and test alike."""
    from genrecedit.config import load_config
    from genrecedit.runs.backbone import train_backbone

    root = tmp_path_factory.mktemp("sequels")
    cfg = load_config(None, [f"dataset={sequel_dir}", f"cache_dir={root / 'cache'}", *tiny_overrides])
    train_backbone(cfg, root / "run")
    return root / "run"


def test_coldstart_chooses_a_margin_on_validation_and_scores_it_on_test(sequel_run, tmp_path):
    run = load_run(sequel_run)
    spec = ColdstartSpec(grid=PriorGrid(scope=(0,), recent=(1,), threshold=(0.5,), temperature=(0.1,), budget=(0.1,),
                                        novel_budget=(None,), head=(0,)),
                         bounds=Bounds(max_warm_drop=1.0, max_item_share=0.999), slots=(1,), recent=(1,),
                         insertion=InsertionGrid(recent=(1,), bias=(0.0, 0.5, 1.0, 1.5, 50.0), candidates=3))
    report = coldstart(run, tmp_path, spec, echo=lambda *_: None)
    selection = json.loads((tmp_path / "coldstart_selection.json").read_text())["insertion"]
    assert selection["chosen"] is not None, selection.get("unavailable")
    cells = selection["cells"]  # the beam's order kept, re-ordered by the warm model, and by it with the counts
    assert [(c["insertion"]["rerank"], c["insertion"]["popularity"], c["insertion"]["bias"]) for c in cells] == \
        [(r, p, b) for r, p in ((False, False), (True, False), (True, True)) for b in (0.0, 0.5, 1.0, 1.5, 50.0)]
    wide = cells[4]["metrics"]
    assert wide["exposure"]["new_item_slot_share"] == 0.0 and wide["warm_drop"] == pytest.approx(0.0)
    assert cells[-1]["metrics"]["exposure"]["new_item_slot_share"] == 0.0  # re-ordered beam items only
    assert report["chosen_insertion"] == selection["chosen"]["config"]
    from genrecedit.runs.coldstart import OTHER_OBJECTIVE, pick_insertion

    whole = json.loads((tmp_path / "coldstart_selection.json").read_text())
    assert selection["objective"] == "cold" and selection["floor"] == whole["baseline_floor"]
    picked = pick_insertion(cells, whole["base"]["overall"]["ndcg@10"], spec.bounds, "cold", selection["floor"])
    assert selection["chosen"]["config"] == picked["insertion"]  # the chosen cell is the cold objective's
    other = OTHER_OBJECTIVE.format(objective="overall")
    assert (other in report["systems"]) == (selection["other"] is not None)
    if selection["other"] is not None:  # the overall objective's cell, fitted and scored beside it
        best = pick_insertion(cells, whole["base"]["overall"]["ndcg@10"], spec.bounds, "overall")
        assert selection["other"]["chosen"]["config"] == best["insertion"] != picked["insertion"]
        assert report["best_baseline"] != other
    row = report["systems"]["calibrated insertion (chosen)"]
    assert row["overall"]["n_cases"] == len(run.prepared.split.test) and "cold_recall@10" in row["vs_base"]
    assert (tmp_path / "coldstart_insertion.json").exists()
    assert report["best_baseline"] != "calibrated insertion (chosen)"
    from genrecedit.runs.coldstart import UNCAPPED

    # served through an exposure cap at the selection's bound, every test case counted; beside it, uncapped
    assert selection["chosen"]["config"]["cap"] == spec.bounds.max_item_share
    assert UNCAPPED in report["systems"] and report["best_baseline"] != UNCAPPED
    assert report["exposure_cap"]["served"] == row["overall"]["n_cases"] and "cold_recall@10" in \
        report["insertion_vs_uncapped"]
    from genrecedit.runs.coldstart import RERANK_ONLY

    assert (RERANK_ONLY in report["systems"]) == report["chosen_insertion"]["rerank"]
    if RERANK_ONLY in report["systems"]:  # the warm model's order alone: no new item in any list
        assert report["systems"][RERANK_ONLY]["exposure"]["new_item_slot_share"] == 0.0
        assert report["best_baseline"] != RERANK_ONLY


def test_an_adopted_insertion_is_what_evaluate_scores(sequel_run, tmp_path):
    """`coldstart --adopt` with the insertion as the recipe copies it into the run and names it in the config;
    `genrecedit evaluate` then scores TIGER + insertion, and no prior. A re-ranking insertion (the only kind tried
    here) is reported with its warm re-rank alone beside it."""
    import shutil

    from genrecedit.config import load_config
    from genrecedit.runs.coldstart import INSERTION, RERANK_ONLY, adopt
    from genrecedit.runs.evaluate_report import evaluate_report

    run_dir = tmp_path / "run"
    shutil.copytree(sequel_run, run_dir)
    spec = ColdstartSpec(grid=PriorGrid(scope=(0,), recent=(1,), threshold=(0.5,), temperature=(0.1,), budget=(0.1,),
                                        novel_budget=(None,), head=(0,)),
                         bounds=Bounds(max_warm_drop=1.0, max_item_share=1.0), slots=(1,), recent=(1,),
                         insertion=InsertionGrid(recent=(1,), bias=(0.0, 0.5, 1.0, 1.5, 50.0), candidates=3,
                                                 rerank=(True,)))
    report = coldstart(load_run(run_dir), tmp_path / "cs", spec, echo=lambda *_: None)
    assert report["chosen_insertion"]["rerank"] and RERANK_ONLY in report["systems"]
    only = report["systems"][RERANK_ONLY]
    assert only["exposure"]["new_item_slot_share"] == 0.0 and only["cold"]["recall@10"] == 0.0
    report = {**report, "recipe": INSERTION}  # whichever validation preferred: adopt the insertion here
    cfg = adopt(run_dir, report, tmp_path / "cs")
    assert cfg.insertion == "insertion.json" and not cfg.prior.enabled
    assert load_config(run_dir / "config.yaml").insertion == "insertion.json"
    fitted = json.loads((tmp_path / "cs" / "coldstart_insertion.json").read_text())
    assert json.loads((run_dir / "insertion.json").read_text()) == fitted
    text = evaluate_report(run_dir, ["prior.enabled=true"], None, "m")
    saved = json.loads((run_dir / "m_intervals.json").read_text())
    assert "TIGER + insertion" in text and set(saved["exposure"]) == {"TIGER", "TIGER + insertion"}
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate_report(run_dir, ["insertion=missing.json"], None, "m2")


def test_no_insertion_grid_means_no_insertion(tiny_run, tmp_path):
    run = load_run(tiny_run)
    spec = dataclasses.replace(ColdstartSpec(grid=PriorGrid(scope=(0,), recent=(1,), threshold=(0.5,),
                                                            temperature=(0.1,), budget=(0.1,), novel_budget=(None,),
                                                            head=(0,)), slots=(1,), recent=(1,)), insertion=None)
    report = coldstart(run, tmp_path, spec, echo=lambda *_: None)
    assert "calibrated insertion (chosen)" not in report["systems"] and report["chosen_insertion"] is None


def test_choosing_the_insertion_never_reads_the_test_split(sequel_run):
    from genrecedit.runs.coldstart import select_coldstart

    run = load_run(sequel_run)
    guarded = without_test(run)
    spec = ColdstartSpec(grid=PriorGrid(scope=(0,), recent=(1,), threshold=(0.5,), temperature=(0.1,), budget=(0.1,),
                                        novel_budget=(None,), head=(0,)),
                         bounds=Bounds(max_warm_drop=1.0, max_item_share=1.0), slots=(1,), recent=(1,),
                         insertion=InsertionGrid(recent=(1, 2), bias=(0.0, 1.0, 50.0), candidates=3))
    selection = select_coldstart(guarded, spec, progress=False)["insertion"]
    assert len(selection["cells"]) == 18 and selection["chosen"] is not None  # 2 recents × 3 warm models × 3


def test_the_counts_come_from_the_training_split_only(sequel_run):
    """The popularity features count training interactions: a new item (played in validation and test, never in
    training) counts 0, and the lately column counts training targets of the period's last quarter only."""
    from genrecedit.evaluation.baselines import train_counts
    from genrecedit.runs.coldstart import item_counts, new_items

    run = load_run(sequel_run)
    split = run.prepared.split
    counts = item_counts(run, 0.25)
    assert counts.shape == (split.n_items, 2) and counts.dtype == np.int64
    np.testing.assert_array_equal(counts[:, 0], train_counts(split))
    new = new_items(run)
    assert len(new) and np.isin(split.valid.targets, new).any() and not counts[new].any()
    late = split.train.timestamps >= np.quantile(split.train.timestamps, 0.75)
    assert counts[:, 1].sum() == late.sum() and 0 < late.sum() < len(late)
    np.testing.assert_array_equal(item_counts(run, 1.0)[:, 1], np.bincount(split.train.targets,
                                                                            minlength=split.n_items))
    with pytest.raises(ConfigError, match="recent_counts"):
        InsertionGrid(recent_counts=0.0)


def test_counts_as_of_a_time_add_the_validation_interactions_of_warm_items_known_by_then(sequel_run):
    """``item_counts(asof=t)``: the validation cases' targets up to t count too (a new item's never), and the
    "lately" window keeps its length but ends at t; checked against a case-by-case count, with the test split
    unreadable."""
    from genrecedit.evaluation.baselines import train_counts
    from genrecedit.runs.coldstart import item_counts

    run = without_test(load_run(sequel_run))
    split = run.prepared.split
    t_train, v_times = split.train.timestamps, split.valid.timestamps
    assert v_times.min() > t_train.max()  # a time split: validation follows training
    np.testing.assert_array_equal(item_counts(run, 0.25, float(t_train.max())), item_counts(run, 0.25))
    length = t_train.max() - np.quantile(t_train, 0.75)
    for asof in (float(np.median(v_times)), float(v_times.max())):
        counts = item_counts(run, 0.25, asof)
        whole, lately = train_counts(split).copy(), np.zeros(split.n_items, np.int64)
        for t, item in zip(t_train, split.train.targets):
            lately[item] += t >= asof - length
        for t, item in zip(v_times, split.valid.targets):
            if t <= asof and split.warm[item]:
                whole[item] += 1
                lately[item] += t >= asof - length
        np.testing.assert_array_equal(counts, np.stack([whole, lately], 1))
        assert counts.sum() > item_counts(run, 0.25).sum()  # validation's warm interactions were counted
    cold = split.valid.targets[~split.warm[split.valid.targets]]
    assert len(cold) and not (item_counts(run, 0.25, float(v_times.max())) - item_counts(run, 0.25))[cold].any()


def test_a_fitted_insertion_carries_the_counts_known_by_its_last_case(sequel_run, monkeypatch):
    """Fitted on validation cases with training's counts (known before any of them), a chosen insertion is served
    with the counts known by its last case: the forward check's picks with those before its cut (no held-out
    interaction), the final pick with all of validation's."""
    from genrecedit.runs import coldstart as cs

    run = load_run(sequel_run)
    cases = cs.selection_cases(run, None, whole=True)
    beams = cs.decode(run, cases, None, False)
    known, count = [], cs.item_counts

    def spy(run_, recent=0.25, asof=None):
        known.append(asof)
        return count(run_, recent, asof)

    monkeypatch.setattr(cs, "item_counts", spy)
    spec = ColdstartSpec(bounds=Bounds(max_warm_drop=1.0, max_item_share=0.999), slots=(1,), recent=(1,),
                         insertion=InsertionGrid(recent=(1,), bias=(0.0, 1.0, 50.0), candidates=3, rerank=(True,),
                                                 popularity=(True,), check=0.3))
    sel = cs.insertion_selection(without_test(run), cases, beams, spec, progress=False)
    assert sel["chosen"] is not None and sel["chosen"]["config"]["popularity"]
    cut = cases.timestamps[cs.latest(cases.timestamps, 0.3)].min()
    served = [t for t in known if t is not None]
    assert None in known and len(served) >= 2  # the grids read training's counts, each fit those known by then
    assert all(t < cut for t in served[:-1]) and served[-1] == cases.timestamps.max() == sel["counts_asof"]
    np.testing.assert_array_equal(sel["chosen"]["counts"], count(run, 0.25, float(cases.timestamps.max())))
    assert not np.array_equal(sel["chosen"]["counts"], count(run, 0.25))


def test_a_chosen_insertion_with_counts_is_scored_beside_the_best_without_them(sequel_run, tmp_path, monkeypatch):
    """Where the chosen cell's warm model reads interaction counts, the report scores the objective's pick among the
    cells that read none on the same test cases, paired; the saved insertion keeps its counts."""
    from genrecedit.runs import coldstart as cs

    original = cs.pick_insertion

    def prefer_counts(cells, *args, **kwargs):  # the chosen cell reads counts whenever such a cell is admissible
        with_counts = [c for c in cells if c["insertion"]["popularity"]]
        return original(with_counts, *args, **kwargs) or original(cells, *args, **kwargs)

    monkeypatch.setattr(cs, "pick_insertion", prefer_counts)
    spec = ColdstartSpec(grid=PriorGrid(scope=(0,), recent=(1,), threshold=(0.5,), temperature=(0.1,), budget=(0.1,),
                                        novel_budget=(None,), head=(0,)),
                         bounds=Bounds(max_warm_drop=1.0, max_item_share=1.0), slots=(1,), recent=(1,),
                         insertion=InsertionGrid(recent=(1,), bias=(0.0, 1.0, 50.0), candidates=3))
    report = coldstart(load_run(sequel_run), tmp_path, spec, echo=lambda *_: None)
    selection = json.loads((tmp_path / "coldstart_selection.json").read_text())["insertion"]
    assert selection["chosen"]["config"]["popularity"] and len(selection["chosen"]["counts"]) > 0
    saved = json.loads((tmp_path / "coldstart_insertion.json").read_text())
    assert saved["counts"] == selection["chosen"]["counts"]
    run = load_run(sequel_run)  # served with the counts known at validation's last case, and the report says when
    last = float(run.prepared.split.valid.timestamps.max())
    assert report["insertion_counts_asof"] == selection["counts_asof"] == last
    np.testing.assert_array_equal(saved["counts"], cs.item_counts(run, 0.25, last))
    assert "the insertion's item counts: as known at" in cs.format_coldstart(report)
    plain = selection["without_counts"]
    assert plain is not None and not plain["chosen"]["config"]["popularity"] and "counts" not in plain["chosen"]
    cells = [c for c in selection["cells"] if not c["insertion"]["popularity"]]
    assert plain["chosen"]["config"] == original(cells, json.loads((tmp_path / "coldstart_selection.json")
                                                                   .read_text())["base"]["overall"]["ndcg@10"],
                                                 spec.bounds, "cold", selection["floor"])["insertion"]
    assert cs.WITHOUT_COUNTS in report["systems"] and report["best_baseline"] != cs.WITHOUT_COUNTS
    assert "cold_recall@10" in report["insertion_vs_without_counts"]


def test_latest_keeps_the_period_latest_share_by_time():
    from genrecedit.runs.coldstart import latest

    times = np.array([5, 1, 3, 2, 4])
    assert latest(times, 0.4).tolist() == [True, False, False, False, True]
    assert latest(times, 1.0).all() and latest(np.array([]), 0.5).shape == (0,)
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="window"):
            InsertionGrid(rules=((bad, True),))
    for bad in (0.0, 1.0):
        with pytest.raises(ConfigError, match="check"):
            InsertionGrid(check=bad)
    with pytest.raises(ConfigError, match="rules"):
        InsertionGrid(rules=())


def test_a_window_fits_and_chooses_the_insertion_on_the_latest_validation_cases_only(sequel_run):
    """A rule's window: every cell is scored on the latest half of validation, and the chosen models are those
    fitted on exactly those cases (the test split unreadable throughout)."""
    from genrecedit.runs.coldstart import (decode, insertion_selection, item_counts, latest, new_items,
                                           selection_cases)

    run = load_run(sequel_run)
    cases = selection_cases(run, None, whole=True)
    beams = decode(run, cases, None, False)

    guarded = without_test(run)
    spec = ColdstartSpec(bounds=Bounds(max_warm_drop=1.0, max_item_share=1.0), slots=(1,), recent=(1,),
                         insertion=InsertionGrid(recent=(1,), bias=(0.0, 1.0, 50.0), candidates=3,
                                                 rules=((0.5, True),)))
    sel = insertion_selection(guarded, cases, beams, spec, progress=False)
    later = latest(cases.timestamps, 0.5)
    assert 0 < later.sum() < len(cases) and sel["n_cases"] == later.sum() and sel["window"] == 0.5
    assert sel["rule_check"] is None  # one rule: nothing to check
    assert {c["metrics"]["overall"]["n_cases"] for c in sel["cells"]} == {int(later.sum())}
    assert sel["chosen"] is not None, sel.get("unavailable")
    cfg = InsertionConfig(**sel["chosen"]["config"])
    props = propose(run.prepared.embeddings, run.prepared.codes, new_items(run), cases.histories[later],
                    beams.rows(later), cfg.recent, cfg.candidates)
    refit = CalibratedInsertion.fit(props, cases.targets[later], cfg, item_counts(run, 0.25))
    if refit.counts is not None:  # served with the counts known by the window's last case
        refit = dataclasses.replace(refit, counts=item_counts(run, 0.25, float(cases.timestamps[later].max())))
    assert sel["chosen"] == refit.to_dict()
    whole = insertion_selection(guarded, cases, beams, dataclasses.replace(
        spec, insertion=spec.insertion.rule(1.0, True)), progress=False)
    assert whole["n_cases"] == len(cases)


def test_without_spending_the_rerank_gain_a_cell_keeps_the_bound_against_its_own_reranked_beams(sequel_run):
    """A rule that does not spend the re-ranking's gain (``spend_rerank`` False): a re-ranking cell is admissible
    only when its planned warm drop keeps the bound against the beams and against its own re-ranked beams (no
    proposal); a keep-order cell has no such drop, and a cell whose margin lets no proposal in loses nothing
    against its re-ranked beams."""
    from genrecedit.runs.coldstart import decode, insertion_selection, selection_cases
    from genrecedit.runs.coldstart_bounds import _admissible

    bounds = Bounds()
    row = {"warm_drop_planned": (-0.5, -0.1), "exposure": {"max_item_share": 0.01}}
    assert _admissible(row, bounds)
    assert not _admissible({**row, "warm_drop_planned_rerank": (0.02, 0.05)}, bounds)
    assert not _admissible({**row, "warm_drop_planned_rerank": (0.05, None)}, bounds)
    assert _admissible({**row, "warm_drop_planned_rerank": (0.01, 0.02)}, bounds)
    assert not _admissible({**row, "warm_drop_planned_rerank": (0.01, 0.02)}, Bounds(upper=True, max_warm_drop=0.015))
    assert _admissible({**row, "warm_drop_planned_rerank": (0.01, 0.02)}, Bounds(upper=False, max_warm_drop=0.015))

    run = load_run(sequel_run)
    cases = selection_cases(run, None, whole=True)
    beams = decode(run, cases, None, False)
    spec = ColdstartSpec(bounds=Bounds(max_warm_drop=1.0, max_item_share=1.0), slots=(1,), recent=(1,),
                         insertion=InsertionGrid(recent=(1,), bias=(0.0, 50.0), candidates=3, rules=((1.0, False),)))
    sel = insertion_selection(run, cases, beams, spec, progress=False)
    for cell in sel["cells"]:
        m = cell["metrics"]
        assert ("warm_drop_planned_rerank" in m) == cell["insertion"]["rerank"]
        if cell["insertion"]["rerank"] and cell["insertion"]["bias"] == 50.0:
            assert m["exposure"]["new_item_slot_share"] == 0.0
            assert m["warm_drop_planned_rerank"] == pytest.approx((0.0, 0.0))
    spent = insertion_selection(run, cases, beams, dataclasses.replace(
        spec, insertion=spec.insertion.rule(1.0, True)), progress=False)
    assert not any("warm_drop_planned_rerank" in c["metrics"] for c in spent["cells"])
    # both rules from one pass over the grid: each the very selection it makes alone
    from genrecedit.runs.coldstart import select_on_window

    both = select_on_window(run, cases, beams, spec, False, spends=(True, False))
    for spend, alone in ((False, sel), (True, spent)):
        assert both[spend] == {k: v for k, v in alone.items() if k != "rule_check"}


def test_the_forward_check_scores_each_rule_on_later_cases_than_it_chose_on(sequel_run, monkeypatch):
    """Several rules: each selects on the validation period's earlier cases only and is scored on its last
    ``check`` share (none within the bounds there: the smallest held-out warm drop), and the rule chosen is then
    applied to every validation case."""
    from genrecedit.runs import coldstart as cs

    run = load_run(sequel_run)
    cases = cs.selection_cases(run, None, whole=True)
    beams = cs.decode(run, cases, None, False)
    seen = []
    original = cs.select_on_window

    def record(run_, cases_, *args, **kwargs):
        seen.append(cases_.timestamps.copy())
        return original(run_, cases_, *args, **kwargs)

    monkeypatch.setattr(cs, "select_on_window", record)
    served = []  # the held-out lists are ranked as served: through the pick's exposure cap, in time order
    rank = CalibratedInsertion.rank

    def spy(self, proposals, k, bias=None, cap=None, new_items=None, order=None, key=None):
        out = rank(self, proposals, k, bias, cap, new_items, order, key)
        served.append((cap, order))
        return out

    monkeypatch.setattr(CalibratedInsertion, "rank", spy)
    spec = ColdstartSpec(bounds=Bounds(max_warm_drop=1.0, max_item_share=0.999), slots=(1,), recent=(1,),
                         insertion=InsertionGrid(recent=(1,), bias=(0.0, 1.0, 50.0), candidates=3, check=0.3))
    sel = cs.insertion_selection(run, cases, beams, spec, progress=False)
    check = sel["rule_check"]
    held = cs.latest(cases.timestamps, 0.3)
    capped = [(cap, order) for cap, order in served if cap is not None]
    assert len(capped) == sum(r["pick"] is not None for r in check["rules"]) > 0
    for cap, order in capped:
        assert cap.share == 0.999 and cap.served == held.sum()
        assert (np.diff(cases.timestamps[held][order]) >= 0).all()
    assert check["n_held"] == held.sum() and check["n_fit"] == (~held).sum()
    assert [tuple(r["rule"]) for r in check["rules"]] == list(spec.insertion.rules)
    cut = cases.timestamps[held].min()
    # one pass over the grid per window (its spend and no-spend rules together), then the chosen rule on all
    assert len(seen) == 3 and all(t.max() <= cut and len(t) == (~held).sum() for t in seen[:2])
    assert len(seen[2]) == len(cases)
    assert check["kept"] and [sel["window"], sel["spend_rerank"]] == check["chosen"]
    chosen, _ = cs.choose_rule(check["rules"], spec.bounds, "cold", check["floor"])
    assert chosen["rule"] == check["chosen"] == [1.0, True]  # every rule keeps bounds this loose: the first stays
    for r in check["rules"]:
        assert r["held_out"]["overall"]["n_cases"] == held.sum()
    strict = cs.rule_check(run, cases, beams, beams.items.numpy(), dataclasses.replace(
        spec, bounds=Bounds(max_warm_drop=-1.0, max_item_share=1.0)), progress=False)
    assert not strict["kept"]  # nothing keeps a bound below zero: the smallest held-out warm drop
    assert strict["chosen"] == min(strict["rules"], key=lambda r: r["held_out"]["warm_drop"])["rule"]


def test_the_forward_check_keeps_the_first_rule_unless_it_breaks_a_bound_one_window_ahead():
    from genrecedit.runs.coldstart import choose_rule

    def rule(name, drop, share, cold, overall):
        return {"rule": name, "held_out": {"warm_drop": drop, "exposure": {"max_item_share": share},
                                           "cold": {"recall@10": cold}, "overall": {"ndcg@10": overall}}}

    bounds = Bounds()
    first = rule("first", 0.01, 0.02, 0.01, 0.020)
    better = rule("better", -0.05, 0.01, 0.05, 0.030)
    assert choose_rule([first, better], bounds, "cold", 0.0) == (first, True)  # the default keeps: it stays
    for broken in (rule("first", 0.05, 0.02, 0.09, 0.04), rule("first", 0.0, 0.07, 0.09, 0.04)):
        safe = rule("safe", 0.02, 0.04, 0.02, 0.022)
        assert choose_rule([broken, safe, better], bounds, "cold", 0.0) == (better, True)  # most cold recall
        assert choose_rule([broken, safe, better], bounds, "cold", 0.025) == (better, True)
        assert choose_rule([broken, safe, better], bounds, "cold", 0.031) == (better, True)  # none above: overall
        assert choose_rule([broken, safe], bounds, "overall", 0.0) == (safe, True)
    worse = rule("worse", 0.10, 0.01, 0.09, 0.04)
    assert choose_rule([rule("first", 0.20, 0.01, 0.1, 0.05), worse], bounds, "cold", 0.0) == (worse, False)


def test_selection_can_add_the_validation_cases_of_users_the_filter_left_out(sequel_run):
    """``valid_users="all"``: the split's validation cases, then those of the users with no test interaction
    (never trained on), still without reading the test split; a sample and the observed-knowledge half apply to
    both; an unknown choice is refused."""
    from genrecedit.data.protocols import unseen_user_valid
    from genrecedit.errors import ConfigError
    from genrecedit.runs import coldstart as cs
    from genrecedit.runs.coldstart import selection_cases
    from genrecedit.runs.selection import validation_midpoint

    run = load_run(sequel_run)
    split = run.prepared.split
    extra = unseen_user_valid(run.prepared.dataset, split, run.config.split)
    assert len(extra) > 0 and not np.isin(extra.users, split.valid.users).any()
    guarded = without_test(run)
    cases = selection_cases(guarded, None, whole=True, users="all")
    assert len(cases) == len(split.valid) + len(extra)
    assert np.array_equal(cases.targets, np.concatenate([split.valid.targets, extra.targets]))
    assert np.array_equal(cases.histories[len(split.valid):], extra.histories)
    assert len(selection_cases(guarded, 50, whole=True, users="all")) == 50
    observed = without_test(load_run(sequel_run, ["knowledge.source=observed"]))
    half = selection_cases(observed, None, whole=False, users="all")
    assert (half.timestamps >= validation_midpoint(split)).all()
    assert len(half) == len(selection_cases(observed, None, whole=False)) + \
        (extra.timestamps >= validation_midpoint(split)).sum()
    spec = ColdstartSpec(grid=PriorGrid(scope=(0,), recent=(1,), threshold=(0.5,), temperature=(0.1,),
                                        budget=(0.1,), novel_budget=(None,), head=(0,)),
                         insertion=None, slots=(1,), recent=(1,), valid_users="all")
    assert cs.select_coldstart(guarded, spec, progress=False)["n_cases"] == len(cases)
    with pytest.raises(ConfigError, match="valid_users"):
        ColdstartSpec(valid_users="everyone")
    with pytest.raises(ConfigError, match="valid_users"):
        selection_cases(run, None, whole=True, users="everyone")
    from genrecedit.runs.evaluate import evaluation_cases

    with pytest.raises(ConfigError, match="validation only"):  # extra cases never join the test split
        evaluation_cases(run, extra)
