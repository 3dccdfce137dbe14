"""One figure per metrics file: R and N at the first cutoff as grouped bars, prefix-NDCG as lines.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), so it works headless and
never disturbs a caller's own plotting.
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# ``report.Summary`` (one model's ``EvalResult.summary()``), spelled out here: ``report.write_metrics`` imports this
# module, so this one must not import ``report`` back
Summary = dict[str, dict[str, float | int | None]]

FIGURE_SIZE = (15.0, 4.5)  # inches
DPI = 110
GROUP_WIDTH = 0.8  # share of the space between subset ticks taken by one group of model bars
SUBSET_LINESTYLES = ("-", "--", ":", "-.")


def metrics_figure_png(results: dict[str, Summary]) -> bytes:
    """PNG bytes of a 3-panel figure for ``{model_name: summary}``.

    Panels: recall@k0 and ndcg@k0 (k0 = the first cutoff) as bars grouped by subset, one bar per model; and
    prefix-NDCG@n against n, one line per model (colour) and subset (line style). Undefined values (empty subsets)
    are left out rather than drawn as zeros.
    """
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    k0 = _first_cutoff(results)
    subsets = _subsets(results)
    if k0 is None:
        for ax in axes[:2]:
            _no_data(ax, "no recall / ndcg values")
    else:
        _bars(axes[0], results, subsets, f"recall@{k0}")
        _bars(axes[1], results, subsets, f"ndcg@{k0}")
    _prefix_lines(axes[2], results, subsets, k0)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _bars(ax, results: dict[str, Summary], subsets: list[str], metric: str) -> None:
    positions = np.arange(len(subsets), dtype=np.float64)
    width = GROUP_WIDTH / max(1, len(results))
    for i, (model, summary) in enumerate(results.items()):
        heights = [_value(summary.get(subset, {}).get(metric)) for subset in subsets]
        offset = (i - (len(results) - 1) / 2.0) * width
        ax.bar(positions + offset, heights, width=width, label=model)
    ax.set_xticks(positions, subsets)
    ax.set_title(metric)
    ax.legend(fontsize="small")


def _prefix_lines(ax, results: dict[str, Summary], subsets: list[str], k0: int | None) -> None:
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    drew = False
    for i, (model, summary) in enumerate(results.items()):
        colour = colours[i % len(colours)]
        for j, subset in enumerate(subsets):
            row = summary.get(subset, {})
            lengths = sorted(int(key.partition("@")[2]) for key in row if key.startswith("prefix_ndcg@"))
            values = [_value(row[f"prefix_ndcg@{n}"]) for n in lengths]
            if not lengths or np.all(np.isnan(values)):
                continue
            style = SUBSET_LINESTYLES[j % len(SUBSET_LINESTYLES)]
            ax.plot(lengths, values, style, marker="o", color=colour, label=f"{model} / {subset}")
            ax.set_xticks(lengths)
            drew = True
    if not drew:
        _no_data(ax, "no SID codes: prefix-NDCG not computed")
        return
    ax.set_xlabel("SID tokens treated as the item (n)")
    ax.set_title(f"prefix-NDCG@n (at k={k0})" if k0 is not None else "prefix-NDCG@n")
    ax.legend(fontsize="x-small")


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _first_cutoff(results: dict[str, Summary]) -> int | None:
    cutoffs = {
        int(key.partition("@")[2])
        for summary in results.values() for row in summary.values() for key in row if key.startswith("recall@")
    }
    return min(cutoffs) if cutoffs else None


def _subsets(results: dict[str, Summary]) -> list[str]:
    """Subset names in first-seen order across models."""
    seen: dict[str, None] = {}
    for summary in results.values():
        seen.update(dict.fromkeys(summary))
    return list(seen)


def _value(value: float | int | None) -> float:
    return float("nan") if value is None else float(value)


def probe_figure_png(accuracy: np.ndarray, chosen: list[int]) -> bytes:
    """PNG bytes of the probe's balanced accuracy per decoder layer, one line per SID position (paper Fig. 8).

    accuracy [P, L]; chosen[p] = the edit layer l_p actually used (marked).
    """
    figure = Figure(figsize=(6.0, 4.0), dpi=DPI)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    layers = np.arange(accuracy.shape[1])
    for p, row in enumerate(accuracy):
        line = ax.plot(layers, row, marker="o", label=f"position {p}")[0]
        ax.plot([chosen[p]], [row[chosen[p]]], marker="*", markersize=14, color=line.get_color())
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("probe balanced accuracy")
    ax.set_xticks(layers)
    ax.set_title("Layer location: linear probe per (position, layer); ★ = edit layer")
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    figure.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()
