"""The MMGRid report: ``results.json`` of a grid run -> ``report.md`` + ``report_*.png`` beside it.

Every number in the report is read from ``results.json``; the report only arranges and compares them. Metrics are
NDCG@10 / Recall@10 of trie-constrained beam search (``evaluate_topk``), on the evaluation sets the grid defines
(temporal: the held-out users' cases of P1 … P_last and all users' test-period cases; cross-domain: each domain's
test cases).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from genrecedit.atomic import write_bytes
from genrecedit.errors import ArtifactMismatchError
from genrecedit.merging import report_plots as plots
from genrecedit.merging.grid import RESULTS_FILE
from genrecedit.merging.grid_eval import metric

REPORT_FILE = "report.md"


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` and its PNGs from ``run_dir/results.json``; returns the markdown's path."""
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise ArtifactMismatchError(f"{run_dir} has no {RESULTS_FILE}; run the grid first")
    results = json.loads(path.read_text())
    lines = (_temporal if results.get("kind") == "temporal" else _cross_domain)(results, run_dir)
    out = run_dir / REPORT_FILE
    write_bytes(out, ("\n".join(lines) + "\n").encode())
    return out


def _f(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _date(t: float) -> str:
    return "–" if not np.isfinite(t) else datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d")


def _subset_cells(evals: dict, model: str, eval_set: str) -> list[str]:
    out = []
    for sub in ("overall", "warm", "cold"):
        out += [_f(metric(evals, model, eval_set, sub, "recall@10")), _f(metric(evals, model, eval_set, sub))]
    return out


SUBSET_HEADER = ["R@10", "N@10", "warm R@10", "warm N@10", "cold R@10", "cold N@10"]


def _temporal(results: dict, run_dir: Path) -> list[str]:
    evals, cells, merges = results["evaluations"], results["cells"], results["merges"]
    periods = results["periods"]
    names = [p["name"] for p in periods]
    sets = names[1:]
    test = names[-1]
    last = names[-2]
    singles = [c for c in cells if c not in ("union",)]
    lines = [f"# MMGRid temporal grid: {results['dataset']}", "",
             "Metrics: NDCG@10 (N) / Recall@10 (R), trie-constrained beam search. Period sets P1 … "
             f"{last}: cases of the held-out evaluation users (never trained on); {test}: all users' test-period "
             "cases. Cold = the target was never interacted with before that period starts.", "", "## Periods", ""]
    lines += _table(["period", "from", "to", "interactions", "users", "new items", "training samples"],
                    [[p["name"], _date(p["start"]), _date(p["end"]), p["n_interactions"], p["n_users"],
                      p["n_new_items"], p["n_train_samples"]] for p in periods])
    lines += ["", "Evaluation sets: " + ", ".join(f"{k}: {v['n_cases']} cases ({v['n_cold']} cold)"
                                                  for k, v in results["eval_sets"].items()), "", "## Cells", ""]
    lines += _table(["cell", "trained on", "starts from", "samples", "epochs", "best epoch", "valid N@10", "train s"],
                    [[n, ",".join(c.get("periods", [])), c.get("parent_cell") or "scratch", c["n_train"],
                      c["train"]["epochs_run"], c["train"]["best_epoch"], _f(c["train"]["best_valid_ndcg10"]),
                      f"{c['wall_seconds']:.0f}"] for n, c in cells.items()])
    # every model on every period: the grid
    rows = ["init", *cells]
    values = np.array([[metric(evals, r, s) or np.nan for s in sets] for r in rows], dtype=float)
    nxt = {(f"P{k}-fb" if k == 1 else f"P{k}-inc", names[k + 1]) for k in range(1, len(names) - 1)}
    nxt |= {(f"P{k}-fb", names[k + 1]) for k in range(1, len(names) - 1)} | {("base", names[1]), ("union", test)}
    write_bytes(run_dir / "report_grid.png", plots.heatmap_png(rows, sets, values, "NDCG@10 of each cell on each "
                                                               "period (red: its next period)", nxt))
    lines += ["", "## Grid: each cell on each period (NDCG@10; **bold** = the cell's next period)", ""]
    lines += _table(["cell", *sets], [[r, *[f"**{_f(v)}**" if (r, s) in nxt else _f(v) for s, v in
                                            zip(sets, [metric(evals, r, s) for s in sets])]] for r in rows])
    lines += ["", "![grid](report_grid.png)", "", "### Next period", ""]
    lines += _table(["cell", "next period", *SUBSET_HEADER],
                    [[r, s, *_subset_cells(evals, r, s)] for r in rows for s in sets if (r, s) in nxt])

    # merges vs the best single checkpoint and the union
    best = max(singles, key=lambda c: metric(evals, c, test) or -1.0)
    best_v, union_v = metric(evals, best, test), metric(evals, "union", test)
    r, n = metric(evals, best, test, key="recall@10") or 0.0, results["eval_sets"][test]["n_cases"]
    lines += ["", f"## Merges vs the best single checkpoint and vs the union ({test})", "",
              f"Best single checkpoint on {test}: **{best}** (N@10 {_f(best_v)}); retrained on the union "
              f"P1–{last} (the base fine-tuned on all of them at once): N@10 {_f(union_v)}. Noise: with n = {n} cases "
              f"the standard error of R@10 ≈ √(R(1−R)/n) = {_f(float(np.sqrt(r * (1 - r) / max(n, 1))))} at "
              f"R = {_f(r)}; all models are scored on the same cases, but differences of a few 0.001 are noise.", ""]
    models = [*merges, "union", best]
    lines += _table(["model", "family", "weights", *SUBSET_HEADER, f"Δ N@10 vs {best}", "mean N@10 P1–" + last],
                    [[m, merges.get(m, {}).get("family", "single"),
                      _weights_text(merges[m]) if m in merges else "–",
                      *_subset_cells(evals, m, test),
                      _f(None if metric(evals, m, test) is None else metric(evals, m, test) - best_v),
                      _f(_mean([metric(evals, m, s) for s in sets[:-1]]))] for m in models])
    write_bytes(run_dir / "report_methods.png", plots.bars_png(
        models, [metric(evals, m, test) for m in models], {f"best single ({best})": best_v, "union": union_v},
        f"NDCG@10 on {test}", "NDCG@10"))
    lines += ["", "![methods](report_methods.png)", ""]
    lines += _conflicts(merges, evals, test)
    lines += _recency(results, evals, sets, run_dir)
    lines += _weights(results, evals, sets, run_dir)
    if "edit" in results:
        lines += _edit(results["edit"])
    return lines


def _weights_text(merge: dict) -> str:
    w = merge["weights"]
    if merge["spec"]["merge_method"] == "linear":  # linear normalises its weights
        w = [x / sum(w) for x in w]
    return ", ".join(f"{x:.2f}" for x in w)


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


TEMPORAL_BASES = ("`@init` = the untrained initialisation the base started from (a base that has not learned the "
                  "task); no suffix or `@base` = the P0 model; `@P1` = the P1 checkpoint (a base that already learned "
                  "the task and P1).")
CROSS_BASES = ("`@init` = the untrained initialisation the base started from (a base that has not learned the task); "
               "no suffix = the union-trained base both domains were fine-tuned from.")


def _conflicts(merges: dict, evals: dict, eval_set: str, bases: str = TEMPORAL_BASES) -> list[str]:
    lines = ["## Base-model replacement and sign conflicts", "",
             "Task vectors τ_i = θ_i − θ_base. Conflict share: entries where ≥ 2 task vectors are non-zero and their "
             "signs differ, over those entries (untrimmed, and after TIES' trim to the top 50 % by magnitude); cosine: "
             "mean pairwise cosine of the task vectors. " + bases, ""]
    rows = []
    for name, m in merges.items():
        if "conflicts" not in m:
            continue
        u, t = m["conflicts"]["untrimmed"], m["conflicts"]["trimmed"]
        rows.append([name, m["spec"]["merge_method"], Path(m["spec"]["base_model"]).name,
                     ", ".join(Path(x["model"]).name for x in m["spec"]["models"]), _f(u["conflict_share"]),
                     _f(t["conflict_share"]), _f(u["cosine"], 3), " / ".join(f"{n:.2f}" for n in u["norms"]),
                     _f(metric(evals, name, eval_set))])
    return lines + _table(["merge", "method", "base", "models", "conflicts", "conflicts (trim .5)", "cosine",
                           "‖τ‖", f"N@10 {eval_set}"], rows) + [""]


def _recency(results: dict, evals: dict, sets: list[str], run_dir: Path) -> list[str]:
    names = [p["name"] for p in results["periods"]]
    ks = range(1, len(names) - 1)
    inc = ["P1-fb" if k == 1 else f"P{k}-inc" for k in ks]
    fb = [f"P{k}-fb" for k in ks]
    merged = [m for m in results["merges"] if results["merges"][m]["family"] == "incremental"]
    series = {m: [metric(evals, m, s) for s in sets] for m in ["base", *inc, fb[-1], *merged]}
    write_bytes(run_dir / "report_recency.png", plots.lines_png(sets, series, "Recency: NDCG@10 per period's cases",
                                                                "NDCG@10"))
    lines = ["## Recency bias of incremental training, and recency-weighted merging", "",
             f"NDCG@10 on each period's cases (older → newer). The last incremental checkpoint ({inc[-1]}) against "
             f"the oldest period (P1) vs the newest ({sets[-1]}), and merges of the incremental chain "
             f"({', '.join(inc)}) with uniform and recency weights (0.5^(age/half-life)).", ""]
    rows = []
    for m in series:
        w = results["merges"].get(m, {}).get("weights")
        rows.append([m, "–" if w is None else ", ".join(f"{x:.2f}" for x in w), *[_f(v) for v in series[m]],
                     _f(None if series[m][0] is None or series[m][-1] is None else series[m][-1] - series[m][0])])
    return lines + _table(["model", "weights (old → new)", *sets, f"{sets[-1]} − {sets[0]}"], rows) + \
        ["", "![recency](report_recency.png)", ""]


def _weights(results: dict, evals: dict, sets: list[str], run_dir: Path) -> list[str]:
    merges, periods = results["merges"], results["periods"]
    sweep = [m for m in merges if merges[m]["family"] == "weight-sweep"]
    if not sweep:
        return []
    a_last, b_last = periods[-3]["name"], periods[-2]["name"]  # the two newest training periods
    alphas = [0.0, *[merges[m]["weights"][1] for m in sweep], 1.0]
    models = [f"{a_last}-fb", *sweep, f"{b_last}-fb"]
    counts = {p["name"]: p["n_train_samples"] for p in periods}
    share = counts[b_last] / (counts[a_last] + counts[b_last])
    series = {s: [metric(evals, m, s) for m in models] for s in (b_last, sets[-1])}
    write_bytes(run_dir / "report_weights.png", plots.sweep_png(
        alphas, series, {f"{b_last} share of training samples": share},
        f"Linear merge of {a_last}-fb and {b_last}-fb", f"weight of {b_last}-fb"))
    lines = ["## Merge weights vs context statistics", "",
             f"Linear merges (1 − α)·{a_last}-fb + α·{b_last}-fb. Context statistics: {b_last} has "
             f"{counts[b_last]} of the {counts[a_last] + counts[b_last]} training samples of the two periods "
             f"(share {share:.2f}).", ""]
    lines += _table(["α (weight of newer)", *[f"N@10 {s}" for s in series]],
                    [[f"{a:.2f}", *[_f(series[s][i]) for s in series]] for i, a in enumerate(alphas)])
    for s, ys in series.items():
        if any(y is not None for y in ys):
            i = int(np.nanargmax([np.nan if y is None else y for y in ys]))
            lines.append(f"- best α on {s}: {alphas[i]:.2f}")
    count = {m: merges[m]["weights"] for m in ("count-fb", "recency-fb", "avg-fb") if m in merges}
    lines += ["", "Three from-base checkpoints weighted by context statistics:", ""]
    lines += _table(["merge", "weights (P1 → last)", *[f"N@10 {s}" for s in sets]],
                    [[m, ", ".join(f"{x / sum(w):.2f}" for x in w), *[_f(metric(evals, m, s)) for s in sets]]
                     for m, w in count.items()])
    return lines + ["", "![weights](report_weights.png)", ""]


def _edit(edit: dict) -> list[str]:
    lines = [f"## Merge + edit (GenRecEdit on `{edit['model']}`)", "",
             f"{edit['n_items']} items new in the test period injected ({edit['n_requests']} requests, layers "
             f"{edit['layers']}, {edit['edit_seconds']:.0f} s); efficacy per position before "
             f"{edit['efficacy']['before']} after {edit['efficacy']['after']}.", ""]
    rows = [[k, *[_f(edit[k][sub][m]) for sub in ("overall", "warm", "cold") for m in ("recall@10", "ndcg@10")],
             edit[k]["cold"]["n_cases"]] for k in ("before", "after")]
    return lines + _table(["", *SUBSET_HEADER, "cold cases"], rows) + [""]


def _cross_domain(results: dict, run_dir: Path) -> list[str]:
    evals, merges, ctx = results["evaluations"], results["merges"], results["context"]
    domains = [d["name"] for d in results["domains"]]
    lines = ["# MMGRid cross-domain grid: " + " + ".join(f"{d['name']} ({d['dataset']}, "
                                                          f"{d['max_users'] or 'all'} users)"
                                                          for d in results["domains"]), "",
             f"One tokenizer over the union of both domains' items ({results['tokenizer']['n_items']} items, fitted "
             f"on {results['tokenizer']['fitted_on']} training items). `base`: trained from scratch on the union of "
             f"both domains' training cases; each domain's checkpoint is fine-tuned from it. Each model is tested "
             f"on each domain's test cases (decoding constrained to that domain's catalog).", "", "## Domains", ""]
    lines += _table(["domain", "users", "items", "warm items", "train samples", "test cases", "evaluated"],
                    [[d, ctx[d]["n_users"], ctx[d]["n_items"], ctx[d]["n_warm_items"], ctx[d]["n_train"],
                      ctx[d]["n_test"], results["eval_sets"][d]["n_cases"]] for d in domains])
    lines += ["", "## Cells", ""]
    lines += _table(["cell", "trained on", "starts from", "samples", "epochs", "best epoch", "train s"],
                    [[n, ",".join(c.get("domains", [])), c.get("parent_cell") or "scratch", c["n_train"],
                      c["train"]["epochs_run"], c["train"]["best_epoch"], f"{c['wall_seconds']:.0f}"]
                     for n, c in results["cells"].items()])
    models = ["base", *domains, *merges]
    for d in domains:
        best = d
        lines += ["", f"## Tested on {d}", "", f"Best single checkpoint for {d}: its own fine-tune (N@10 "
                  f"{_f(metric(evals, d, d))}); union-trained base: {_f(metric(evals, 'base', d))}.", ""]
        lines += _table(["model", *SUBSET_HEADER, f"Δ N@10 vs {best}"],
                        [[m, *_subset_cells(evals, m, d), _f(None if metric(evals, m, d) is None else
                                                             metric(evals, m, d) - metric(evals, best, d))]
                         for m in models])
    values = np.array([[metric(evals, m, d) or np.nan for d in domains] for m in models], dtype=float)
    write_bytes(run_dir / "report_grid.png", plots.heatmap_png(models, domains, values,
                                                               "NDCG@10 per model and test domain"))
    lines += ["", "![grid](report_grid.png)", ""]
    lines += _conflicts(merges, evals, domains[0], CROSS_BASES)
    sweep = [m for m in merges if merges[m]["family"] == "weight-sweep"]
    if sweep and len(domains) == 2:
        alphas = [0.0, *[merges[m]["weights"][0] for m in sweep], 1.0]
        order = [domains[1], *sweep, domains[0]]
        series = {d: [metric(evals, m, d) for m in order] for d in domains}
        share = ctx[domains[0]]["n_train"] / (ctx[domains[0]]["n_train"] + ctx[domains[1]]["n_train"])
        write_bytes(run_dir / "report_weights.png", plots.sweep_png(
            alphas, series, {f"{domains[0]} share of training samples": share},
            f"Linear merge α·{domains[0]} + (1 − α)·{domains[1]}", f"weight of {domains[0]}"))
        lines += ["## Merge weights vs context statistics", "",
                  f"{domains[0]} holds {share:.2f} of the two domains' training samples.", ""]
        lines += _table(["α (weight of " + domains[0] + ")", *[f"N@10 {d}" for d in domains]],
                        [[f"{a:.2f}", *[_f(series[d][i]) for d in domains]] for i, a in enumerate(alphas)])
        lines += ["", "![weights](report_weights.png)", ""]
    return lines
