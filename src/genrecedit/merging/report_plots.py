"""The grid report's figures, drawn with matplotlib's object API on an Agg canvas (headless, no pyplot)."""
from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110


def _png(figure: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buf)
    return buf.getvalue()


def heatmap_png(rows: list[str], cols: list[str], values: np.ndarray, title: str, marks: set | None = None) -> bytes:
    """values [len(rows), len(cols)] (NaN: not evaluated); ``marks`` = {(row, col)} cells outlined (next period)."""
    figure = Figure(figsize=(1.4 * len(cols) + 3, 0.38 * len(rows) + 1.5), dpi=DPI)
    ax = figure.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.4f}", ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] < np.nanmean(values) else "black")
            if marks and (rows[i], cols[j]) in marks:
                ax.add_patch(_rect(j, i))
    ax.set_title(title)
    figure.colorbar(im, ax=ax)
    figure.tight_layout()
    return _png(figure)


def _rect(x: float, y: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)


def lines_png(xs: list[str], series: dict[str, list[float | None]], title: str, ylabel: str) -> bytes:
    """One line per series over the categorical ``xs`` (None: gap)."""
    figure = Figure(figsize=(7.5, 4.5), dpi=DPI)
    ax = figure.add_subplot()
    for name, ys in series.items():
        y = np.asarray([np.nan if v is None else v for v in ys], dtype=float)
        ax.plot(range(len(xs)), y, marker="o", label=name)
    ax.set_xticks(range(len(xs)), xs)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def bars_png(names: list[str], values: list[float | None], refs: dict[str, float], title: str,
             ylabel: str) -> bytes:
    """Horizontal bars per model, with dashed reference lines (best single checkpoint, union)."""
    figure = Figure(figsize=(7.5, 0.32 * len(names) + 1.8), dpi=DPI)
    ax = figure.add_subplot()
    v = [np.nan if x is None else x for x in values]
    ax.barh(range(len(names)), v, color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    for (label, x), style in zip(refs.items(), ("--", ":", "-.")):
        ax.axvline(x, color="red", linestyle=style, label=f"{label} {x:.4f}")
    ax.set_xlabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return _png(figure)


def sweep_png(alphas: list[float], series: dict[str, list[float | None]], shares: dict[str, float], title: str,
              xlabel: str) -> bytes:
    """Metric against a merge weight, one line per evaluation context, with each context's data share marked."""
    figure = Figure(figsize=(7.5, 4.5), dpi=DPI)
    ax = figure.add_subplot()
    for (name, ys), color in zip(series.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        y = np.asarray([np.nan if v is None else v for v in ys], dtype=float)
        ax.plot(alphas, y, marker="o", color=color, label=f"N@10 on {name}")
        if np.isfinite(y).any():
            best = alphas[int(np.nanargmax(y))]
            ax.axvline(best, color=color, alpha=0.4)
    for (name, share), style in zip(shares.items(), ("--", ":")):
        ax.axvline(share, color="grey", linestyle=style, label=f"{name} = {share:.2f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("NDCG@10")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)
