"""The sweep grid renders the same cells in the CLI's fixed-width table and the experiment report's markdown."""
from __future__ import annotations

from genrecedit.experiments.tables import selection_table
from genrecedit.runs.sweep import SWEEP_COLUMNS, format_sweep, sweep_rows


def _metrics(overall: float, warm: float, cold_r: float | None, cold_n: float | None) -> dict:
    return {"overall": {"ndcg@10": overall}, "warm": {"ndcg@10": warm},
            "cold": {"recall@10": cold_r, "ndcg@10": cold_n}}


SWEEP = {
    "base": _metrics(0.0200, 0.0300, 0.0, 0.0),
    "cells": [
        {"lam": 300.0, "n": 3, "metrics": _metrics(0.0210, 0.0285, 0.0123, 0.0045), "warm_ndcg10_drop": 0.05,
         "cold_exposure": 0.0412, "efficacy": {"after": [0.1, 0.5]}},
        {"lam": 1000.0, "n": 5, "metrics": _metrics(0.0190, 0.0306, None, None), "warm_ndcg10_drop": -0.02,
         "efficacy": {"after": [0.1, 0.4]}},
    ],
    "chosen": {"lam": 300.0, "n": 3}, "max_warm_drop": 0.05, "cases": "valid", "n_cases": 1234,
}


def test_rows_hold_every_cell_once_base_first():
    rows = sweep_rows(SWEEP)
    assert [r[:2] for r in rows] == [["base", "–"], ["300", "3"], ["1000", "5"]]
    assert all(len(r) == len(SWEEP_COLUMNS) for r in rows)
    assert rows[1][SWEEP_COLUMNS.index("warm drop")] == "+5.0%"
    assert rows[2][SWEEP_COLUMNS.index("warm drop")] == "-2.0%"
    assert rows[1][SWEEP_COLUMNS.index("cold R@10")] == "0.0123"
    assert rows[2][SWEEP_COLUMNS.index("cold R@10")] == "–"  # an empty cold subset is undefined, not 0
    assert rows[1][SWEEP_COLUMNS.index("cold exposure")] == "4.1%"
    assert rows[2][SWEEP_COLUMNS.index("cold exposure")] == "–"  # a sweep.json from before it was recorded


def test_terminal_and_markdown_show_the_same_cells():
    text = format_sweep(SWEEP)
    md = selection_table({"selection": SWEEP, "chosen": {**SWEEP["chosen"], "by": "rule"}})
    for row in sweep_rows(SWEEP):
        assert "| " + " | ".join(row) + " |" in md
        line = next(line for line in text.splitlines() if line.split()[:2] == row[:2])
        assert line.split()[: len(row) - 1] == row[:-1] and line.endswith(row[-1])
    assert "chosen: {'lam': 300.0, 'n': 3}" in text and "chosen: λ = 300, n = 3 (rule)" in md
