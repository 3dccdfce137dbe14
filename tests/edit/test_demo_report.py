"""``run_demo`` (what ``make demo`` runs) on the synthetic dataset with the demo's item-holdout launch: it writes
``report.json`` in the shape the issue fixes and prints the before/after table."""
from __future__ import annotations

import json

from genrecedit.config import load_config
from genrecedit.runs.backbone import load_run
from genrecedit.runs.demo import run_demo

SUBSETS = ("overall", "warm", "cold")
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "iid_ratio@10", "n_cases")


def test_demo_writes_the_report(tmp_path, synthetic_dir, tiny_overrides):
    cfg = load_config("demo", [f"dataset={synthetic_dir}", f"cache_dir={tmp_path / 'cache'}", *tiny_overrides,
                               "edit.lam=1000", "train.epochs=2", "decode.beam=20", "decode.k=20"])
    lines: list[str] = []
    out = run_demo(cfg, tmp_path / "demo", echo=lines.append, upper_bound=False)
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report == json.loads(json.dumps(out))
    assert report["dataset"] == str(synthetic_dir)
    for model in ("base", "edited"):
        assert set(report[model]) == set(SUBSETS)
        for subset in SUBSETS:
            assert set(METRICS) <= set(report[model][subset])
            assert all(0.0 <= report[model][subset][m] <= 1.0 for m in METRICS if m != "n_cases")
    assert report["base"]["cold"]["n_cases"] > 0  # the holdout launch leaves cold test cases to measure
    assert report["timing_s"]["train"] > 0 and report["timing_s"]["edit"] > 0
    assert report["edit"]["trigger"] == "prefix" and report["edit"]["n_items"] > 0  # demo.yaml's, chosen on validation
    # the demo re-fits λ for the shipped edit on validation: never below the selected λ, and within the bound there
    refit = json.loads((tmp_path / "demo" / "calibrate.json").read_text())
    assert report["edit"]["lam_selected"] == 1000 and report["edit"]["lam"] == refit["chosen_lam"] >= 1000
    shipped = next(t for t in refit["trials"] if t["lam"] == refit["chosen_lam"])
    assert refit["by"] == "warm_drop" and shipped["warm_ndcg10_drop"] <= 0.05
    assert report["timing_s"]["edit_wall"] > report["timing_s"]["edit"]  # the re-fit's edits are not update time
    assert any("GenRecEdit" in line for line in lines) and (tmp_path / "demo" / "metrics.md").exists()
    # both settings, each with its base, edited model and exposure on the same test cases
    settings = report["settings"]
    assert set(settings) == {"text_only", "early_feedback"}
    early, text = settings["early_feedback"], settings["text_only"]
    assert early["edited"] == {s: {m: report["edited"][s][m] for m in ("recall@10", "ndcg@10")} for s in SUBSETS}
    assert early["base"] == text["base"] == {s: {m: report["base"][s][m] for m in ("recall@10", "ndcg@10")}
                                              for s in SUBSETS}
    assert set(early["exposure"]) == {"new_item_slot_share", "max_item_share", "unreached_items"}
    selection = json.loads((tmp_path / "demo" / "coldstart_selection.json").read_text())
    coldstart = json.loads((tmp_path / "demo" / "coldstart.json").read_text())
    # the demo selects on every user's validation cases (here every user reaches test: no case is added)
    assert selection["valid_users"] == "all" and selection["n_cases"] == len(
        load_run(tmp_path / "demo").prepared.split.valid)
    assert text["recipe"]["prior"] == selection["chosen"]
    assert text["recipe"]["served"] == coldstart["recipe"]
    adopted = load_config(tmp_path / "demo" / "config.yaml")
    if coldstart["recipe"] is None:
        assert text["edited"] is None and not adopted.prior.enabled and adopted.insertion is None
    elif coldstart["recipe"] == "content prior (chosen)":  # the chosen prior is what the run's config now serves
        assert set(text["exposure"]) == set(early["exposure"]) and adopted.prior.enabled
        assert adopted.insertion is None
        assert {k: getattr(adopted.prior, k) for k in selection["chosen"] if k != "enabled"} == {
            k: v for k, v in selection["chosen"].items() if k != "enabled"}
    else:  # the fitted insertion is copied into the run, named by its config, and the prior is off
        assert adopted.insertion == "insertion.json" and not adopted.prior.enabled
        assert json.loads((tmp_path / "demo" / "insertion.json").read_text()) == selection["insertion"]["chosen"]
    # the recipe served is the one the objective (cold, the default) prefers on validation: the most cold recall
    # among those above the baselines' floor, else the better NDCG@10
    valid, cold = coldstart["recipe_valid_ndcg@10"], coldstart["recipe_valid_cold_recall@10"]
    above = [k for k in valid if valid[k] > selection["baseline_floor"]]
    expected = max(above, key=lambda k: (cold[k] or 0.0, valid[k])) if above else max(valid, key=valid.get,
                                                                                     default=None)
    assert coldstart["objective"] == text["recipe"]["objective"] == "cold" and coldstart["recipe"] == expected


def test_the_demo_scores_the_upper_bound_only_when_asked(monkeypatch, tmp_path):
    """The Upper Bound row reads the test histories (an analysis): `genrecedit demo` leaves it out unless
    ``--upper-bound`` is given."""
    from typer.testing import CliRunner

    import genrecedit.runs.demo as demo
    from genrecedit.cli import app

    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda cfg, run_dir, echo=print, upper_bound=False, **_:
                        seen.append(upper_bound))
    for args in ([], ["--upper-bound"]):
        result = CliRunner().invoke(app, ["demo", "--run-dir", str(tmp_path / "demo"), *args])
        assert result.exit_code == 0, result.output
    assert seen == [False, True]
