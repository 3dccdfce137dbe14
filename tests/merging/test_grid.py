"""The MMGRid grid on tiny synthetic data: periods, user roles, the training chains, the shared tokenizers."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from genrecedit.config import load_config
from genrecedit.data.protocols import make_split
from genrecedit.data.readers import load_dataset
from genrecedit.errors import ArtifactMismatchError, ConfigError
from genrecedit.merging.grid import temporal_cells, temporal_run_config
from genrecedit.merging.grid_config import Budget, CrossDomainGrid, Domain, GridConfig, TemporalGrid, load_grid_config
from genrecedit.merging.merge import merge_models
from genrecedit.merging.periods import (EVAL_USER, TRAIN_USER, VALID_USER, make_periods, period_cases,
                                        user_roles)
from genrecedit.merging.spec import parse_spec
from genrecedit.model.tiger import load_model, save_model

# the root conftest by path: a bare `import conftest` is ambiguous when the whole suite runs (several conftests)
_root = importlib.util.spec_from_file_location("_root_conftest", Path(__file__).parents[1] / "conftest.py")
_conftest = importlib.util.module_from_spec(_root)
_root.loader.exec_module(_conftest)
TINY_OVERRIDES, write_synthetic_atomic = _conftest.TINY_OVERRIDES, _conftest.write_synthetic_atomic

QUANTILES = [0.4, 0.6, 0.8, 0.9]


def _grid_config(synthetic_dir: Path, cache: Path, **kw) -> GridConfig:
    return GridConfig(kind="temporal", run_config=None,
                      overrides=[f"dataset={synthetic_dir}", f"cache_dir={cache}", *TINY_OVERRIDES],
                      base_budget=Budget(epochs=1), finetune_budget=Budget(epochs=1, warmup_steps=2),
                      eval_max_cases=30, edit_merged=False,
                      temporal=TemporalGrid(period_quantiles=QUANTILES, valid_user_fraction=0.15,
                                            eval_user_fraction=0.15), **kw)


@pytest.fixture(scope="module")
def split(synthetic_dir, tmp_path_factory):
    cfg = temporal_run_config(_grid_config(synthetic_dir, tmp_path_factory.mktemp("cache")))
    return make_split(load_dataset(str(synthetic_dir)), cfg.split)


def test_periods_do_not_overlap_and_cover_the_time_line(split):
    periods = make_periods(split, QUANTILES)
    assert periods.names == ["P0", "P1", "P2", "P3", "T"]
    assert np.all(np.diff(periods.cutoffs) > 0)
    # train = P0 … P3 and test = T, exactly
    assert periods.of(split.train.timestamps).max() == 3 and np.all(periods.of(split.test.timestamps) == 4)
    roles = user_roles(len(split.user_ids), 0.15, 0.15, seed=0)
    every = list(range(len(periods.names)))
    total = 0
    for role in (TRAIN_USER, VALID_USER, EVAL_USER):
        per_period = [period_cases(split, periods, roles, [k], role) for k in every[:-1]]
        for k, cases in enumerate(per_period):
            assert np.all(periods.of(cases.timestamps) == k)  # in its period, so periods are disjoint
            assert np.all((cases.timestamps >= periods.start(k)) & (cases.timestamps < periods.end(k)))
            assert np.all(roles[cases.users] == role)
        total += sum(len(c) for c in per_period)
    assert total == len(split.train)  # every training interaction lies in exactly one (period, role)
    assert len(period_cases(split, periods, roles, [4], TRAIN_USER)) == len(split.test)


def test_user_roles_partition_users_reproducibly():
    roles = user_roles(1000, 0.1, 0.2, seed=3)
    assert np.bincount(roles).tolist() == [700, 100, 200]
    assert np.array_equal(roles, user_roles(1000, 0.1, 0.2, seed=3))


def test_incremental_chain_and_from_base_parents():
    cells = {name: (which, parent) for name, which, parent in temporal_cells(4, union=True)}
    assert cells["base"] == ([0], None)
    assert [cells[f"P{k}-fb"][1] for k in (1, 2, 3)] == ["base"] * 3
    assert cells["P2-inc"][1] == "P1-fb" and cells["P3-inc"][1] == "P2-inc"
    assert cells["union"] == ([1, 2, 3], "base")


def test_grid_config_is_validated_and_bundled_configs_load():
    with pytest.raises(ConfigError, match="period_quantiles"):
        GridConfig(temporal=TemporalGrid(period_quantiles=[0.5, 0.4, 0.9]))
    with pytest.raises(ConfigError, match="unknown key"):
        load_grid_config("mmgrid-ml100k", ["temporal.bogus=1"])
    assert load_grid_config("mmgrid-ml100k").kind == "temporal"
    cross = load_grid_config("mmgrid-cross")
    assert [d.dataset for d in cross.cross_domain.domains] == ["amazon2018-game", "amazon2014-beauty"]


@pytest.fixture(scope="module")
def temporal_grid(synthetic_dir, tmp_path_factory):
    from genrecedit.merging.grid import run_grid

    root = tmp_path_factory.mktemp("grid")
    results = run_grid(_grid_config(synthetic_dir, root / "cache"), root / "grid")
    return root / "grid", results


def _hash(run_dir: Path) -> str:
    return json.loads((run_dir / "model" / "model.json").read_text())["weights_hash"]


def test_each_stage_starts_from_its_parent_checkpoint(temporal_grid):
    grid, results = temporal_grid
    cells = results["cells"]
    for k in (1, 2, 3):
        assert cells[f"P{k}-fb"]["init_weights_hash"] == _hash(grid / "cells" / "base")
    assert cells["P2-inc"]["init_weights_hash"] == _hash(grid / "cells" / "P1-fb")
    assert cells["P3-inc"]["init_weights_hash"] == _hash(grid / "cells" / "P2-inc")
    assert cells["union"]["init_weights_hash"] == _hash(grid / "cells" / "base")
    assert cells["base"]["init_weights_hash"] == _hash(grid / "cells" / "init")  # scratch = the seeded init
    assert cells["P2-inc"]["weights_hash"] != cells["P2-fb"]["weights_hash"]


def test_every_cell_and_merge_shares_one_tokenizer_and_is_a_run_dir(temporal_grid):
    from genrecedit.runs.backbone import load_run

    grid, results = temporal_grid
    dirs = [grid / "cells" / c for c in ["init", *results["cells"]]] + [grid / "merges" / m for m in results["merges"]]
    ref = (grid / "shared" / "tokenizer" / "tokenizer.json").read_bytes()
    hashes = {load_model(d / "model")[3].tokenizer_hash for d in dirs}
    assert len(hashes) == 1
    assert all((d / "tokenizer" / "tokenizer.json").read_bytes() == ref for d in dirs)
    run = load_run(grid / "merges" / "ties-fb")  # what `genrecedit evaluate` / `edit` do
    assert run.base_hash == _hash(grid / "merges" / "ties-fb")
    assert set(results["evaluations"]["avg-fb"]) >= {"P1", "P2", "P3", "T"}
    conflicts = results["merges"]["ties-fb"]["conflicts"]["untrimmed"]
    assert 0.0 <= conflicts["conflict_share"] <= 1.0


def test_report_is_written(temporal_grid, tmp_path):
    from genrecedit.merging.report import write_report

    grid, _ = temporal_grid
    out = write_report(grid)
    text = out.read_text()
    assert "best single checkpoint" in text and (grid / "report_recency.png").is_file()


def test_a_mismatched_tokenizer_is_refused_at_merge(temporal_grid, tmp_path):
    grid, _ = temporal_grid
    other = tmp_path / "other"
    shutil.copytree(grid / "cells" / "P2-fb", other)
    model, cfg, layout, _ = load_model(other / "model")
    save_model(model, cfg, layout, other / "model", "f" * 64)  # as if trained over another tokenizer
    spec = parse_spec({"merge_method": "ties", "base_model": str(grid / "cells" / "base"),
                       "models": [str(grid / "cells" / "P1-fb"), str(other)]})
    with pytest.raises(ArtifactMismatchError, match="different tokenizers"):
        merge_models(spec, tmp_path / "out")


def test_cross_domain_cells_share_a_union_tokenizer(tmp_path):
    from genrecedit.merging.grid import run_grid
    from genrecedit.tokenizer.sids import SemanticIdTokenizer

    a = write_synthetic_atomic(tmp_path / "src" / "a", name="a", seed=0, n_users=50)
    b = write_synthetic_atomic(tmp_path / "src" / "b", name="b", seed=1, n_users=40)
    cfg = GridConfig(kind="cross_domain", run_config=None,
                     overrides=[f"cache_dir={tmp_path / 'cache'}", *TINY_OVERRIDES, "tokenizer.dedup_capacity=40"],
                     base_budget=Budget(epochs=1), finetune_budget=Budget(epochs=1, warmup_steps=2),
                     eval_max_cases=20, cross_domain=CrossDomainGrid(domains=[Domain("a", str(a), 30),
                                                                              Domain("b", str(b))], alphas=[0.5]))
    results = run_grid(cfg, tmp_path / "grid")
    grid = tmp_path / "grid"
    tok = SemanticIdTokenizer.load(grid / "shared" / "tokenizer")
    items_a = set(load_dataset(str(grid / "data" / "a")).items.index)
    items_b = set(load_dataset(str(grid / "data" / "b")).items.index)
    assert items_a and items_b and not items_a & items_b  # ids are prefixed by domain
    assert set(tok.item_ids) == items_a | items_b
    for cell in ("init", "base", "a", "b"):
        assert (grid / "cells" / cell / "tokenizer" / "tokenizer.json").read_bytes() == \
            (grid / "shared" / "tokenizer" / "tokenizer.json").read_bytes()
        assert load_model(grid / "cells" / cell / "model")[3].tokenizer_hash == tok.quantizer_hash()
    assert load_config(grid / "cells" / "a" / "config.yaml").dataset == str(grid / "data" / "a")
    assert results["cells"]["a"]["init_weights_hash"] == _hash(grid / "cells" / "base")
    assert len(results["context"]["a"]) and set(results["evaluations"]["ties"]) >= {"a", "b"}
