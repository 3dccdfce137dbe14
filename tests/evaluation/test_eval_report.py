"""evaluate_topk summaries by hand, bootstrap intervals, and the files write_metrics leaves behind."""
from __future__ import annotations

import json

import numpy as np
import pytest

from genrecedit.errors import ConfigError, EmptyInputError, UnknownItemError
from genrecedit.evaluation import bootstrap
from genrecedit.evaluation.bootstrap import bootstrap_ci, paired_bootstrap_diff
from genrecedit.evaluation.metrics import EMPTY_SLOT
from genrecedit.evaluation.report import evaluate_topk, format_table, markdown_table, write_metrics

WARM = np.array([True, True, True, False, False])  # items 3 and 4 are cold
CODES = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [0, 2]], dtype=np.int64)
TOPK = np.array([[0, 3, 1], [2, 4, EMPTY_SLOT], [3, 0, 2]], dtype=np.int64)
TARGETS = np.array([1, 4, 2], dtype=np.int64)  # ranks 2, 1, 2
COLD = ~WARM[TARGETS]


def _summary():
    return evaluate_topk(TOPK, TARGETS, COLD, WARM, CODES, ks=(3, 1)).summary()


def test_summary_keys_and_counts():
    summary = _summary()
    assert list(summary) == ["overall", "warm", "cold"]
    assert list(summary["overall"]) == [
        "recall@1", "recall@3", "ndcg@1", "ndcg@3", "iid_ratio@1", "iid_ratio@3",
        "prefix_ndcg@1", "prefix_ndcg@2", "n_cases",
    ]
    assert [summary[s]["n_cases"] for s in summary] == [3, 2, 1]


def test_summary_values_by_hand():
    s = _summary()
    third = 1.0 / np.log2(3.0)
    assert s["overall"]["recall@1"] == 0.0 and s["overall"]["recall@3"] == 1.0
    assert s["overall"]["ndcg@3"] == pytest.approx((0.5 + third + 0.5) / 3)
    assert s["warm"]["ndcg@3"] == 0.5 and s["cold"]["ndcg@3"] == pytest.approx(third)
    # iid: warm subset -> share of warm items; cold and overall -> share of cold items
    assert s["warm"]["iid_ratio@3"] == pytest.approx(2 / 3) and s["warm"]["iid_ratio@1"] == 0.5
    assert s["cold"]["iid_ratio@3"] == pytest.approx(1 / 3) and s["cold"]["iid_ratio@1"] == 0.0
    assert s["overall"]["iid_ratio@3"] == pytest.approx(1 / 3) and s["overall"]["iid_ratio@1"] == pytest.approx(1 / 3)
    # prefix-NDCG at the first cutoff (k=1): one shared first code puts cases 0 and 2 at rank 0
    assert s["overall"]["prefix_ndcg@1"] == pytest.approx(2 / 3)
    assert (s["warm"]["prefix_ndcg@1"], s["cold"]["prefix_ndcg@1"]) == (1.0, 0.0)
    assert s["overall"]["prefix_ndcg@2"] == 0.0


def test_empty_subset_is_none_and_strict_json():
    warm_only = np.zeros(3, dtype=bool)
    result = evaluate_topk(TOPK, TARGETS, warm_only, WARM, None, ks=(1, 3))
    summary = result.summary()
    assert summary["cold"]["n_cases"] == 0
    assert all(v is None for k, v in summary["cold"].items() if k != "n_cases")
    assert not any(k.startswith("prefix_ndcg") for k in summary["overall"])
    json.dumps(summary, allow_nan=False)


def test_per_case_feeds_paired_bootstrap():
    result = evaluate_topk(TOPK, TARGETS, COLD, WARM, CODES, ks=(1, 3))
    assert result.per_case("ndcg@3", "warm").tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="cutoff"):
        result.per_case("recall@50")
    diff, lo, hi = paired_bootstrap_diff(result.per_case("recall@3"), result.per_case("recall@1"), n_boot=200)
    assert diff == 1.0 and lo == hi == 1.0


def test_boundary_errors():
    with pytest.raises(ConfigError, match="decode more"):
        evaluate_topk(TOPK, TARGETS, COLD, WARM, CODES, ks=(10,))
    with pytest.raises(UnknownItemError):
        evaluate_topk(TOPK + 5, TARGETS, COLD, WARM, CODES, ks=(1,))


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    values = np.random.default_rng(1).random(500)
    lo, hi = bootstrap_ci(values, n_boot=300, seed=7)
    assert lo < values.mean() < hi
    assert (lo, hi) == bootstrap_ci(values, n_boot=300, seed=7)
    assert (lo, hi) != bootstrap_ci(values, n_boot=300, seed=8)
    with pytest.raises(EmptyInputError):
        bootstrap_ci(np.zeros(0))


def test_bootstrap_blocks_do_not_change_the_interval(monkeypatch):
    values = np.random.default_rng(2).random(50)
    whole = bootstrap_ci(values, n_boot=64, seed=3)
    monkeypatch.setattr(bootstrap, "MAX_BLOCK_ELEMENTS", 120)  # 2 replicates a block
    assert bootstrap_ci(values, n_boot=64, seed=3) == whole


def test_paired_diff_of_identical_arrays_is_exactly_zero():
    values = np.random.default_rng(3).random(100)
    assert paired_bootstrap_diff(values, values.copy()) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap_diff(values, values[:-1])


def test_write_metrics_files_round_trip(tmp_path):
    results = {"tiger": _summary(), "most_pop": evaluate_topk(TOPK, TARGETS, COLD, WARM, None, ks=(1, 3)).summary()}
    table = write_metrics(tmp_path / "run", "test_metrics", results)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["test_metrics.json", "test_metrics.md", "test_metrics.png"]
    assert json.loads((run / "test_metrics.json").read_text()) == results
    assert (run / "test_metrics.md").read_text() == table == markdown_table(results)
    assert (run / "test_metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = table.splitlines()[0]
    for label in ("R@1", "R@3", "N@3", "IID@1", "prefix-NDCG@2"):
        assert label in header
    assert "IID@3" not in header
    assert len(table.splitlines()[2:8]) == 6 and "| most_pop | cold | 1 |" in table
    with pytest.raises(ConfigError):
        write_metrics(tmp_path, "../escape", results)


def test_write_metrics_with_empty_subset(tmp_path):
    summary = evaluate_topk(TOPK, TARGETS, np.zeros(3, dtype=bool), WARM, CODES, ks=(1, 3)).summary()
    table = write_metrics(tmp_path, "warm_only", {"m": summary})
    assert "| m | cold | 0 | – |" in table
    assert json.loads((tmp_path / "warm_only.json").read_text())["m"]["cold"]["recall@1"] is None


def test_format_table_is_compact():
    text = format_table({"tiger": _summary()})
    lines = text.splitlines()
    assert lines[0].split() == ["model", "subset", "n", "R@1", "N@1", "R@3", "N@3"]
    assert len(lines) == 2 + 3 and lines[2].split()[:3] == ["tiger", "overall", "3"]


def test_plots_summary_alias_matches_report():
    """plots spells ``Summary`` out instead of importing report (report imports plots): the two must agree."""
    from genrecedit.evaluation import plots, report

    assert plots.Summary == report.Summary
