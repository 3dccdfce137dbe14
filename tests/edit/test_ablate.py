"""The ablation runner: every cell runs, seeds aggregate, finished cells are reused by a rerun."""
from __future__ import annotations

import json

from genrecedit.runs.ablate import CELLS, ablate
from genrecedit.runs.backbone import load_run


def test_ablations_run_every_cell_and_resume(tiny_run, tmp_path, monkeypatch):
    run = load_run(tiny_run, ["edit.lam=1.0", "eval.max_cases=40"])
    result = ablate(run, tmp_path, seeds=[0, 1])
    assert set(result["cells"]) == set(CELLS)
    assert all(len(c["seeds"]) == 2 for c in result["cells"].values())
    random_layers = [r["layers"] for r in result["cells"]["w/o classifier (random)"]["seeds"]]
    probe = result["cells"]["GenRecEdit"]["seeds"][0]
    # the trigger ablation scores the very same artifact as GenRecEdit, only decoded with every edit active
    assert result["cells"]["w/o one-one triggering"]["seeds"][0]["layers"] == probe["layers"]
    # ... and every edit firing at every step changes what is recommended
    assert result["cells"]["w/o one-one triggering"]["seeds"][0]["metrics"] != probe["metrics"]
    assert all(len(layers) == run.recommender.layout.n_positions for layers in random_layers)
    assert (tmp_path / "ablations.md").read_text().count("|") > 20
    saved = json.loads((tmp_path / "ablations.json").read_text())
    assert saved["cells"]["GenRecEdit"]["mean"]["overall"]["ndcg@10"] == result["cells"]["GenRecEdit"]["mean"][
        "overall"]["ndcg@10"]

    # a rerun reuses every finished cell: no edit is recomputed
    import genrecedit.runs.ablate as mod

    def boom(*args, **kwargs):
        raise AssertionError("a cached cell was recomputed")
    monkeypatch.setattr(mod.ColdItemEditor, "edit", boom)
    again = ablate(run, tmp_path, seeds=[0, 1])
    assert again["cells"]["GenRecEdit"]["mean"] == result["cells"]["GenRecEdit"]["mean"]
