"""Evaluate top-K lists on Overall / Warm / Cold cases, and write the results next to a run (json, md, png).

``evaluate_topk`` is the one entry point that turns a recommender's lists into metrics; the CLI, experiments and
benchmarks all call it. ``EvalResult`` keeps per-case values so that two systems evaluated on the same cases can be
compared with ``paired_bootstrap_diff``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrecedit.errors import ConfigError, UnknownItemError
from genrecedit.evaluation import metrics
from genrecedit.evaluation.bootstrap import bootstrap_ci, paired_bootstrap_diff

__all__ = [
    "DEFAULT_KS", "SUBSETS", "EvalResult", "evaluate_topk", "bootstrap_ci", "paired_bootstrap_diff",
    "write_metrics", "markdown_table", "format_table",
]

DEFAULT_KS: tuple[int, ...] = (10, 20, 50)
SUBSETS: tuple[str, ...] = ("overall", "warm", "cold")
DECIMALS = 4  # digits shown in tables; the json keeps full precision
MISSING = "–"  # table cell of a metric that is undefined (empty subset)
TERMINAL_CUTOFFS = 2  # format_table shows R/N at the first this-many cutoffs
COLUMN_LABELS = {"recall": "R", "ndcg": "N", "iid_ratio": "IID", "prefix_ndcg": "prefix-NDCG"}

Summary = dict[str, dict[str, float | int | None]]


@dataclass(frozen=True)
class EvalResult:
    """Per-case metric inputs of one system on one case set.

    ks: the cutoffs, ascending. ranks: [n] int64 0-based target rank (``metrics.NOT_FOUND`` when absent).
    prefix_ranks: [n, P] int64, column j = rank with the first j + 1 SID tokens as the item; P = 0 without codes.
    warm_share, cold_share: [n, len(ks)] float64 share of the top-ks[i] slots holding warm / cold items.
    cold_mask: [n] bool, True for cold cases (target absent from training).
    """

    ks: tuple[int, ...]
    ranks: np.ndarray
    prefix_ranks: np.ndarray
    warm_share: np.ndarray
    cold_share: np.ndarray
    cold_mask: np.ndarray

    def __len__(self) -> int:
        return int(self.ranks.shape[0])

    def cold_exposure(self, k: int = 10) -> float:
        """Mean share of the top-k slots that hold cold items, over the warm cases: how much room the new items
        take from the recommendations of users who wanted a known item. It needs no label beyond which cases are
        warm, and under ``preserve`` decoding the warm NDCG@k drop follows it (docs/method.md §5.6)."""
        if k not in self.ks:
            raise ValueError(f"cold exposure at k={k}: the cutoffs are {self.ks}")
        warm = ~self.cold_mask
        return float(self.cold_share[warm, self.ks.index(k)].mean()) if warm.any() else 0.0

    def subset_mask(self, subset: str) -> np.ndarray:
        """[n] bool selecting the cases of ``"overall"``, ``"warm"`` or ``"cold"``."""
        if subset == "overall":
            return np.ones(len(self), dtype=bool)
        if subset == "warm":
            return ~self.cold_mask
        if subset == "cold":
            return self.cold_mask.copy()
        raise ValueError(f"unknown subset {subset!r}; expected one of {SUBSETS}")

    def per_case(self, metric: str, subset: str = "overall") -> np.ndarray:
        """[n_subset] float64 values of one summary metric on one subset's cases, in case order.

        metric: a summary key: ``recall@k``, ``ndcg@k``, ``iid_ratio@k`` (k in ``ks``) or ``prefix_ndcg@n``
        (n in 1..P, NDCG at the first cutoff ``ks[0]``). ``iid_ratio`` is the share of warm items for the warm
        subset and the share of cold items for the cold and overall subsets (overall tracks how far cold items
        reach anyone's list, the collapse the paper reports).
        """
        name, _, arg = metric.partition("@")
        if not arg.isdigit():
            raise ValueError(f"metric {metric!r} must look like 'name@number'")
        value = int(arg)
        mask = self.subset_mask(subset)
        if name == "recall":
            return metrics.recall_at(self.ranks[mask], self._cutoff(value))
        if name == "ndcg":
            return metrics.ndcg_at(self.ranks[mask], self._cutoff(value))
        if name == "iid_ratio":
            share = self.warm_share if subset == "warm" else self.cold_share
            return share[mask, self.ks.index(self._cutoff(value))]
        if name == "prefix_ndcg":
            n_positions = self.prefix_ranks.shape[1]
            if not 1 <= value <= n_positions:
                raise ValueError(f"prefix_ndcg@{value}: n must be in 1..{n_positions} (SID length)")
            return metrics.ndcg_at(self.prefix_ranks[mask, value - 1], self.ks[0])
        raise ValueError(f"unknown metric {name!r}; expected one of {sorted(COLUMN_LABELS)}")

    def metric_names(self) -> list[str]:
        """Summary keys in display order (``n_cases`` excluded)."""
        names = [f"recall@{k}" for k in self.ks] + [f"ndcg@{k}" for k in self.ks]
        names += [f"iid_ratio@{k}" for k in self.ks]
        names += [f"prefix_ndcg@{n}" for n in range(1, self.prefix_ranks.shape[1] + 1)]
        return names

    def summary(self) -> Summary:
        """``{"overall"|"warm"|"cold": {metric_name: mean, ..., "n_cases": int}}`` with plain Python numbers.

        An empty subset has ``n_cases == 0`` and ``None`` for every metric (undefined, not zero: a 0.0 would read
        as a measured failure); the output never contains NaN, so it serialises as strict JSON. Metric meanings as
        in ``per_case`` (``iid_ratio``: warm-item share on warm cases, cold-item share on cold and overall cases).
        """
        out: Summary = {}
        for subset in SUBSETS:
            n_cases = int(self.subset_mask(subset).sum())
            row: dict[str, float | int | None] = {
                name: (float(self.per_case(name, subset).mean()) if n_cases else None) for name in self.metric_names()
            }
            row["n_cases"] = n_cases
            out[subset] = row
        return out

    def _cutoff(self, k: int) -> int:
        if k not in self.ks:
            raise ValueError(f"cutoff {k} was not evaluated; available: {self.ks}")
        return k


def evaluate_topk(
    topk_items: np.ndarray,
    targets: np.ndarray,
    cold_mask: np.ndarray,
    warm_items: np.ndarray,
    codes: np.ndarray | None,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> EvalResult:
    """Score ranked lists against one target per case.

    topk_items: [n, K] int64 item indices, best first, ``metrics.EMPTY_SLOT`` for empty slots; K >= max(ks).
    targets: [n] int64. cold_mask: [n] bool (usually ``split.is_cold(cases)``). warm_items: [n_items] bool
    (``split.warm``). codes: [n_items, P] int64 SID codes of every catalog item, or None to skip prefix-NDCG.
    ks: cutoffs (positive; sorted and deduplicated here).
    """
    ks = _check_inputs(topk_items, targets, cold_mask, warm_items, codes, ks)
    ranks = metrics.target_ranks(topk_items, targets)
    n_positions = 0 if codes is None else codes.shape[1]
    prefix = np.empty((len(targets), n_positions), dtype=np.int64)
    if codes is not None:
        for j in range(n_positions):
            prefix[:, j] = metrics.prefix_ranks(topk_items, targets, codes, j + 1)
    cold_items = ~warm_items
    warm_share = np.stack([metrics.iid_ratio_at(topk_items, warm_items, k) for k in ks], axis=1)
    cold_share = np.stack([metrics.iid_ratio_at(topk_items, cold_items, k) for k in ks], axis=1)
    return EvalResult(ks, ranks, prefix, warm_share, cold_share, cold_mask.astype(bool))


def markdown_table(results: dict[str, Summary]) -> str:
    """A markdown table, one row per model x subset; columns R@k, N@k (every cutoff), IID at the first cutoff,
    prefix-NDCG@n (every SID length present), and the number of cases. Undefined cells show ``MISSING``."""
    columns = _table_columns(results)
    header = ["model", "subset", "n"] + [_label(c) for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, summary in results.items():
        for subset, row in summary.items():
            cells = [model, subset, str(row.get("n_cases", MISSING))] + [_cell(row.get(c)) for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
    note = "IID: share of top-K items in the subset's item set (cold items for overall). "
    note += "prefix-NDCG@n: the first n SID tokens treated as the item, NDCG at the first cutoff."
    return "\n".join(lines) + "\n\n" + note + "\n"


def format_table(results: dict[str, Summary]) -> str:
    """A compact fixed-width table for a terminal: model x subset rows, n and R/N at the first two cutoffs."""
    cutoffs = _cutoffs(results)[:TERMINAL_CUTOFFS]
    columns = [f"{name}@{k}" for k in cutoffs for name in ("recall", "ndcg")]
    model_width = max([len("model")] + [len(m) for m in results])
    header = f"{'model':<{model_width}}  {'subset':<7} {'n':>7} " + " ".join(f"{_label(c):>8}" for c in columns)
    lines = [header, "-" * len(header)]
    for model, summary in results.items():
        for subset, row in summary.items():
            cells = " ".join(f"{_cell(row.get(c)):>8}" for c in columns)
            lines.append(f"{model:<{model_width}}  {subset:<7} {row.get('n_cases', 0):>7} {cells}")
    return "\n".join(lines)


def write_metrics(run_dir: Path, name: str, results: dict[str, Summary]) -> str:
    """Write ``<name>.json`` (the results, strict JSON), ``<name>.md`` (``markdown_table``) and ``<name>.png``
    (bars of R and N at the first cutoff, prefix-NDCG lines) into ``run_dir``, each atomically.

    results: ``{model_name: EvalResult.summary()}``. Returns the markdown string.
    """
    if not name or Path(name).name != name:
        raise ConfigError(f"metrics name {name!r} must be a plain file name without directories")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results)
    _atomic_write(run_dir / f"{name}.json", json.dumps(results, indent=2, allow_nan=False).encode())
    _atomic_write(run_dir / f"{name}.md", table.encode())
    from genrecedit.evaluation.plots import metrics_figure_png  # matplotlib loads only when a figure is written

    _atomic_write(run_dir / f"{name}.png", metrics_figure_png(results))
    return table


def _check_inputs(
    topk_items: np.ndarray,
    targets: np.ndarray,
    cold_mask: np.ndarray,
    warm_items: np.ndarray,
    codes: np.ndarray | None,
    ks: tuple[int, ...],
) -> tuple[int, ...]:
    """Validate shapes and index ranges at this boundary; return the sorted, deduplicated cutoffs."""
    if topk_items.ndim != 2:
        raise ValueError(f"topk_items must be [n, K], got shape {topk_items.shape}")
    n, width = topk_items.shape
    if targets.shape != (n,) or cold_mask.shape != (n,):
        raise ValueError(f"targets {targets.shape} and cold_mask {cold_mask.shape} must both be ({n},)")
    n_items = warm_items.shape[0]
    if codes is not None and codes.shape[0] != n_items:
        raise ValueError(f"codes has {codes.shape[0]} rows but the catalog has {n_items} items")
    if not ks or min(ks) < 1:
        raise ConfigError(f"cutoffs must be positive integers, got {ks}")
    if max(ks) > width:
        raise ConfigError(f"top-k lists hold {width} items, fewer than the cutoff {max(ks)}; decode more items")
    if topk_items.size and (topk_items.min() < metrics.EMPTY_SLOT or topk_items.max() >= n_items):
        raise UnknownItemError(f"top-k lists contain item indices outside 0..{n_items - 1}")
    if n and (targets.min() < 0 or targets.max() >= n_items):
        raise UnknownItemError(f"targets contain item indices outside 0..{n_items - 1}")
    return tuple(sorted(set(int(k) for k in ks)))


def _cutoffs(results: dict[str, Summary]) -> list[int]:
    """Ascending cutoffs k of every ``recall@k`` key in the results."""
    keys = {key for summary in results.values() for row in summary.values() for key in row}
    return sorted(int(key.partition("@")[2]) for key in keys if key.startswith("recall@"))


def _table_columns(results: dict[str, Summary]) -> list[str]:
    keys = {key for summary in results.values() for row in summary.values() for key in row}
    cutoffs = _cutoffs(results)
    columns = [f"recall@{k}" for k in cutoffs] + [f"ndcg@{k}" for k in cutoffs]
    if cutoffs and f"iid_ratio@{cutoffs[0]}" in keys:
        columns.append(f"iid_ratio@{cutoffs[0]}")
    lengths = sorted(int(key.partition("@")[2]) for key in keys if key.startswith("prefix_ndcg@"))
    return columns + [f"prefix_ndcg@{n}" for n in lengths]


def _label(column: str) -> str:
    name, _, arg = column.partition("@")
    return f"{COLUMN_LABELS.get(name, name)}@{arg}"


def _cell(value: float | int | None) -> str:
    return MISSING if value is None else f"{value:.{DECIMALS}f}"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename over ``path``: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
