"""The experiment runner on the tiny trained run: every table and PNG, resumable cells, selection on validation."""
from __future__ import annotations

import json

import pytest

import genrecedit.experiments.cells as cells_mod
from genrecedit.errors import ConfigError
from genrecedit.experiments.runner import run_experiment
from genrecedit.experiments.spec import CELLS, ExperimentConfig, load_experiment


def _config(tiny_run, **changes) -> ExperimentConfig:
    base = dict(run=str(tiny_run), overrides=["threads=1", "eval.bootstrap=10", "edit.lam=1.0"],
                cells=list(CELLS), seeds=[0], lams=[1.0, 100.0], select_ns=[1], ns=[1, 2],
                sources=["pseudo", "upper_bound"], max_cases=30, valid_max_cases=30,
                baselines={"sasrec": {"epochs": 1, "eval_cases": 20}, "no-such-model": {}},
                retrain={"epochs": 1, "eval_cases": 20}, finetune={"epochs": 1})
    base.update(changes)
    return ExperimentConfig(**base)


def test_every_table_and_figure_then_resume(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    res = run_experiment(_config(tiny_run), out)
    report = (out / "report.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Knowledge sources", "chosen on validation"):
        assert title in report
    for fig in ("fig3", "fig5", "fig6", "fig7", "fig8"):
        assert (out / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"({fig}.png)" in report
    for name in ("TIGER", "GenRecEdit", "MostPop", "RecentPop", "SASRec", "Retrain", "Finetune"):
        assert "summary" in res["rows"][name], name
    assert "not_available" in res["rows"]["no-such-model"]  # a missing baseline is a row saying so, not numbers
    assert "not available" in report
    assert "| LC-Rec | not run: " in report  # the paper's LLM baseline is listed with its reason, never dropped
    assert set(res["update_times"]) >= {"GenRecEdit (C0 cold)", "GenRecEdit (C0 cached)", "Finetune", "Retrain"}
    assert not res["update_times"]["GenRecEdit (C0 cold)"]["c0_cached"]
    assert res["update_times"]["GenRecEdit (C0 cached)"]["c0_cached"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"]["TIGER"]["summary"] == res["rows"]["TIGER"]["summary"]
    assert (out / "experiment.yaml").exists() and list((out / "cells").glob("*.json"))

    # a rerun reuses every cached cell: no edit, sweep or training runs again
    def boom(*args, **kwargs):
        raise AssertionError("a cached cell was recomputed")
    monkeypatch.setattr(cells_mod.ColdItemEditor, "edit", boom)
    monkeypatch.setattr(cells_mod, "sweep", boom)
    monkeypatch.setattr(cells_mod, "ablate", boom)
    again = run_experiment(_config(tiny_run), out)
    assert again["cache"]["computed"] == []
    assert again["rows"]["GenRecEdit"]["summary"] == res["rows"]["GenRecEdit"]["summary"]


def test_unknown_cell_is_a_config_error(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="table9"):
        _config(tiny_run, cells=["table1", "table9"])
    path = tmp_path / "e.yaml"
    path.write_text(f"run: {tiny_run}\ncells: [fig42]\n")
    with pytest.raises(ConfigError, match="fig42"):
        load_experiment(path)
    with pytest.raises(ConfigError):
        load_experiment(path, ["cells=[table1]", "nonsense"])


def test_overrides_split_between_experiment_and_run(tiny_run, tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(f"run: {tiny_run}\noverrides: [threads=1]\n")
    cfg = load_experiment(path, ["max_cases=7", "decode.k=10"])
    assert cfg.max_cases == 7 and cfg.overrides == ["threads=1", "decode.k=10"]


def test_lambda_and_n_are_chosen_on_validation(tiny_run, tmp_path, monkeypatch):
    seen = []
    real_sweep = cells_mod.sweep

    def spy(run, lams, ns, out_dir, max_warm_drop):
        seen.append(run.config.eval.cases)
        res = real_sweep(run, lams, ns, out_dir, max_warm_drop)
        if (lams, ns) == ([7.0], [2]):  # make this cell the validation winner: the choice must follow it
            res["cells"][0]["metrics"]["overall"]["ndcg@10"] = 1.0
            res["cells"][0]["warm_ndcg10_drop"] = 0.0
        return res
    monkeypatch.setattr(cells_mod, "sweep", spy)
    res = run_experiment(_config(tiny_run, cells=["fig8"], lams=[1.0, 7.0], select_ns=[1, 2]), tmp_path / "sel")
    assert seen == ["valid"] * 4  # one sweep call per (λ, n), all on validation cases
    assert res["selection"]["cases"] == "valid"
    assert res["chosen"]["lam"] == 7.0 and res["chosen"]["n"] == 2
    # the edit reported (here Fig. 8's) is the chosen cell, scored on test
    assert res["sources"]["pseudo"]["report"]["n_requests"] > 0
    assert (tmp_path / "sel" / "fig8.png").exists()
    cell_files = [json.loads(p.read_text()) for p in (tmp_path / "sel" / "cells").glob("*.json")]
    edits = [c["params"] for c in cell_files if c["kind"] == "edit"]
    assert edits == [{"source": "pseudo", "lam": 7.0, "n": 2, "cases": "test", "max_cases": 30, "seed": 0}]


def test_a_new_knob_at_its_neutral_value_keeps_cached_cells(tiny_run, tmp_path):
    """Cells cached before ``edit.lam_scale`` existed are still found while it is None, and not once it is set."""
    import dataclasses

    from genrecedit.config import cache_view
    from genrecedit.experiments.cells import CellCache
    from genrecedit.runs.backbone import load_run

    run = load_run(tiny_run, [])
    tree = run.config.to_dict()
    assert tree["edit"]["lam_scale"] is None
    old_tree = {**tree, "edit": {k: v for k, v in tree["edit"].items() if k != "lam_scale"}}  # before the knob
    assert cache_view(tree) == cache_view(old_tree)
    assert cache_view(tree["edit"], "edit") == old_tree["edit"]
    key = CellCache(tmp_path, run).key("tiger", {"cases": "test"})
    scaled = dataclasses.replace(run, config=dataclasses.replace(
        run.config, edit=dataclasses.replace(run.config.edit, lam_scale=[1.0, 2.0, 1.0, 1.0])))
    assert CellCache(tmp_path, scaled).key("tiger", {"cases": "test"}) != key
