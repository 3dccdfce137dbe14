"""The experiment's figures (paper Figs. 3, 5, 6, 7, 8) as PNGs, drawn on an Agg canvas (no pyplot state)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from genrecedit.atomic import write_bytes
from genrecedit.evaluation.plots import probe_figure_png

DPI = 110


def _figure(ncols: int, width: float = 5.0, height: float = 4.0) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, list(np.atleast_1d(axes))


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _v(x) -> float:
    return float("nan") if x is None else float(x)


def fig3(tiger: dict, ks: list[int]) -> bytes:
    """TIGER, warm vs cold: prefix-NDCG@1..P (left) and IID ratio@k (right)."""
    fig, (left, right) = _figure(2)
    for sub, style in (("warm", "-o"), ("cold", "--s")):
        row = tiger[sub]
        lengths = sorted(int(k.partition("@")[2]) for k in row if k.startswith("prefix_ndcg@"))
        left.plot(lengths, [_v(row[f"prefix_ndcg@{n}"]) for n in lengths], style, label=sub)
        left.set_xticks(lengths)
    left.set_xlabel("SID tokens treated as the item (n)")
    left.set_title("TIGER prefix-NDCG@n")
    left.legend()
    x = np.arange(len(ks))
    for i, sub in enumerate(("warm", "cold")):
        right.bar(x + (i - 0.5) * 0.4, [_v(tiger[sub].get(f"iid_ratio@{k}")) for k in ks], 0.4, label=sub)
    right.set_xticks(x, [f"@{k}" for k in ks])
    right.set_title("TIGER IID ratio (share of top-K in the subset's items)")
    right.legend()
    return _png(fig)


def fig5(systems: dict[str, dict]) -> bytes:
    """Cold and overall R@10 / N@10 bars for Origin, GenRecEdit and the Upper Bound."""
    fig, axes = _figure(2)
    x = np.arange(2)
    width = 0.8 / max(1, len(systems))
    for ax, metric in zip(axes, ("recall@10", "ndcg@10")):
        for i, (name, s) in enumerate(systems.items()):
            ax.bar(x + (i - (len(systems) - 1) / 2) * width, [_v(s["cold"][metric]), _v(s["overall"][metric])],
                   width, label=name)
        ax.set_xticks(x, ["cold", "overall"])
        ax.set_title(metric)
        ax.legend(fontsize="small")
    return _png(fig)


def _lines(ax, xs: list, series: dict[str, list], xlabel: str, title: str, logx: bool = False) -> None:
    for name, ys in series.items():
        ax.plot(xs, ys, "-o", label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def fig6(cells: dict[str, dict], base: dict | None) -> bytes:
    """Cold R@10 and warm / overall N@10 against the pseudo-histories per item n (test, chosen λ)."""
    ns = sorted(int(n) for n, cell in cells.items() if "summary" in cell)
    s = [cells[str(n)]["summary"] for n in ns]
    fig, (left, right) = _figure(2)
    _lines(left, ns, {"cold R@10": [_v(r["cold"]["recall@10"]) for r in s]}, "pseudo-histories per item (n)",
           "cold R@10")
    _lines(right, ns, {"warm N@10": [_v(r["warm"]["ndcg@10"]) for r in s],
                       "overall N@10": [_v(r["overall"]["ndcg@10"]) for r in s]}, "pseudo-histories per item (n)",
           "warm / overall N@10")
    if base is not None:
        right.axhline(_v(base["warm"]["ndcg@10"]), color="grey", ls=":", label="TIGER warm N@10")
        right.legend(fontsize="small")
    return _png(fig)


def fig7(selection: dict) -> bytes:
    """λ trade-off on the validation cases of the selection sweep: cold R@10 and warm N@10 vs λ, one line per n."""
    fig, (left, right) = _figure(2)
    ns = sorted({c["n"] for c in selection["cells"]})
    for n in ns:
        cells = sorted((c for c in selection["cells"] if c["n"] == n), key=lambda c: c["lam"])
        lams = [c["lam"] for c in cells]
        left.plot(lams, [_v(c["metrics"]["cold"]["recall@10"]) for c in cells], "-o", label=f"n={n}")
        right.plot(lams, [_v(c["metrics"]["warm"]["ndcg@10"]) for c in cells], "-o", label=f"n={n}")
    right.axhline(_v(selection["base"]["warm"]["ndcg@10"]), color="grey", ls=":", label="unedited")
    for ax, title in ((left, "cold R@10"), (right, "warm N@10")):
        ax.set_xscale("log")
        ax.set_xlabel("λ")
        ax.set_title(f"{title} ({selection['cases']} cases)")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return _png(fig)


def write_figures(res: dict, cfg, out_dir: Path) -> dict[str, str]:
    """Write the PNGs the requested cells have data for; returns {figure: file name}."""
    out, cells = {}, set(cfg.cells)
    tiger = res["rows"].get("TIGER", {}).get("summary")
    ks = [k for k in (10, 20, 50) if k <= res["decode"]["k"]]
    pngs: dict[str, bytes] = {}
    if "fig3" in cells and tiger:
        pngs["fig3"] = fig3(tiger, ks)
    available = {k for k, v in res["sources"].items() if "summary" in v}
    if "fig5" in cells and tiger and {"pseudo", "upper_bound"} <= available:
        pngs["fig5"] = fig5({"Origin": tiger, "GenRecEdit": res["sources"]["pseudo"]["summary"],
                             "Upper Bound": res["sources"]["upper_bound"]["summary"]})
    if "fig6" in cells and any("summary" in c for c in res["fig6"].values()):
        pngs["fig6"] = fig6(res["fig6"], tiger)
    if "fig7" in cells and "selection" in res:
        pngs["fig7"] = fig7(res["selection"])
    pseudo = res["sources"].get("pseudo") or res["rows"].get("GenRecEdit")
    if "fig8" in cells and pseudo and pseudo.get("report", {}).get("probe"):
        pngs["fig8"] = probe_figure_png(np.asarray(pseudo["report"]["probe"]["accuracy"]), pseudo["report"]["layers"])
    for name, data in pngs.items():
        write_bytes(Path(out_dir) / f"{name}.png", data)
        out[name] = f"{name}.png"
    return out
