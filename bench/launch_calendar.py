"""Launch calendar: continuous editing at retail pace on a time split (issue 21, item 1).

The cold items that first occur in the test period arrive in daily batches, in the order of their first interaction
(the earliest timestamp among the split's validation and test cases that target them). Day 1 starts at UTC midnight
of the first such arrival; when the test period from there is shorter than ``days`` calendar days, the time from the
first arrival to the last test case is cut into ``days`` equal-time slices instead (the JSON's ``calendar.mode``
says which). An item *has arrived by* time t when its first interaction is before t; day d's items arrive during
day d, so on day d's morning (``edges[d]``) the items of days < d have arrived and today's have not.

Each day d, in this order:
1. *Morning*: day d's test cases (target time on day d) are scored with the model as it stood that morning, i.e. with
   the edits of rounds < d, and with the unedited model: warm N@10 of both with a paired bootstrap interval of the
   drop, cold R@10 of today's items and of earlier days' items, the share of top-10 slots that hold cold items.
   With ``--insertion PATH`` (a fitted ``CalibratedInsertion`` JSON: the text-only recipe) the morning's lists are the
   edited model's beams with the insertion merged in over the cold items arrived by that morning (``Served``: the
   backlog first seen before the test period, the calendar's items of days < d, items over the per-day cap
   included; never today's items, nor a cold item never seen in the validation or test cases). The unedited
   reference is always the plain beams.
2. *Round d* (edits that serve from day d + 1's morning on):
   a. with ``--reedit``, re-edit on feedback: every calendar item of days < d not re-edited yet that has observed
      requests — the split's test cases with a timestamp before ``edges[d]`` (day d's morning) and a non-empty
      history that target it, at most ``knowledge.histories_per_item`` each (``case_histories``) — is edited from
      them once: ``ColdItemEditor.replace_items`` replaces its text-only edit (exact replacement, method.md §5.8);
      an item without one (no text requests) gets them as a feedback batch appended (``ColdItemEditor.edit``).
      Round d reads nothing at or after day d's morning, so an item is re-edited in the round after its first day,
      from that day's interactions, and its text-only edit serves one morning (the last day's items are never
      re-edited).
   b. (unless ``--no-text-edit``) day d's items are edited on top of all earlier batches
      (``ColdItemEditor.edit(previous=...)``) from the run's text-only knowledge source (``pseudo`` or
      ``successor``: training samples and item text, nothing observed after training). Requests are built once for
      all calendar items in arrival order; the hand-out of a neighbour's training samples goes item by item in that
      order, so day d's requests depend on earlier days' items only.
   The round's edit seconds (update time of every solve, and wall time of the calls) are recorded; the artifact is
   saved by ``EditArtifact.save`` into a temp folder and its bytes counted.
3. *After the round* (the next morning's model, with the insertion over the items arrived by day d + 1's morning):
   fixed panels are re-scored: a sample of warm test cases (warm drop with interval) and, per arrival day, test cases
   that target that day's items after their arrival day (whether day-1 items are still recommended at the end; the
   arrival day's cases, the only ones re-edit can read, are never in the panel).

Cold items first seen in the validation period are not edited (the insertion serves them).

    PYTHONPATH=bench python bench/launch_calendar.py --size full --insertion runs/game/cs7/coldstart_insertion.json \
        --reedit --out runs/bench/full-cal2
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common import bench_setup, drop_with_ci, evaluate_detailed, hardware, md_table, write_result
from genrecedit.atomic import write_bytes
from genrecedit.baselines.update import measure
from genrecedit.coldstart.insertion import CalibratedInsertion
from genrecedit.coldstart.prior import normalized
from genrecedit.data.dataset import CaseSet
from genrecedit.edit.knowledge import EditRequests, case_histories
from genrecedit.errors import ConfigError
from genrecedit.model.beam import Beams
from genrecedit.runs.edit import build_requests, make_editor

NAME = "launch_calendar"
TEXT_ONLY = ("pseudo", "successor")  # knowledge sources that read no interaction after training
DAY_SECONDS = 86400.0


def first_seen(split) -> np.ndarray:
    """[n_items] the earliest target time of each item among the validation and test cases (inf: never a target)."""
    first = np.full(split.n_items, np.inf)
    for cases in (split.valid, split.test):
        np.minimum.at(first, cases.targets, cases.timestamps)
    return first


def make_calendar(split, days: int, day_seconds: float = DAY_SECONDS) -> dict:
    """The days of the launch calendar: ``edges`` [days + 1] times (day d is [edges[d], edges[d + 1])), ``mode``,
    ``item_day`` [n_items] (the day of each cold item that first occurs in the test period, -1 for every other
    item) and the backlog (cold items first seen before the test period)."""
    if len(split.test) == 0:
        raise ConfigError("the split has no test cases: no launch calendar")
    first, cold = first_seen(split), ~split.warm
    test_start, end = float(split.test.timestamps.min()), float(split.test.timestamps.max())
    arriving = cold & (first >= test_start) & np.isfinite(first)
    if not arriving.any():
        raise ConfigError("no cold item first occurs in the test period: no launch calendar")
    start = float(np.floor(first[arriving].min() / day_seconds) * day_seconds)
    if end - start < days * day_seconds:  # a short cold period: equal-time slices from the first arrival
        mode = "equal-time slices"
        start = float(first[arriving].min())
        edges = np.linspace(start, end, days + 1)
        edges[-1] = np.nextafter(end, np.inf)  # the last slice holds the last timestamp
    else:
        mode = "calendar days"
        edges = start + day_seconds * np.arange(days + 1, dtype=np.float64)
    item_day = np.full(split.n_items, -1, np.int64)
    day = day_of(edges, first)
    inside = arriving & (day >= 0)
    item_day[inside] = day[inside]
    return {"edges": edges, "mode": mode, "item_day": item_day, "start": start, "end": end,
            "backlog": np.flatnonzero(cold & np.isfinite(first) & (first < test_start)),
            "after_calendar": np.flatnonzero(arriving & ~inside)}


def day_of(edges: np.ndarray, times: np.ndarray) -> np.ndarray:
    """[n] the calendar day of each time (-1 outside the calendar)."""
    day = np.searchsorted(edges, times, side="right") - 1
    return np.where((day >= 0) & (day < len(edges) - 1), day, -1)


def arrived(first: np.ndarray, warm: np.ndarray, t: float) -> np.ndarray:
    """[m] the cold items (``warm`` [n_items] False) whose first interaction (``first`` [n_items]) is before ``t``,
    sorted."""
    return np.flatnonzero(~warm & (first < t))


@dataclass
class Served:
    """The text-only recipe as a list's last step: ``insertion`` merged into the beams over ``new_items`` [m] (the
    cold items arrived by ``cutoff``). Called as ``evaluate_detailed``'s rerank: (histories [n, L], beams [n, k])
    -> lists [n, k]."""

    insertion: CalibratedInsertion
    embeddings: np.ndarray  # [n_items, d] item text embeddings
    codes: np.ndarray  # [n_items, P] semantic IDs
    new_items: np.ndarray  # [m]
    cutoff: float
    unit: torch.Tensor | None = None  # normalized(embeddings), bound once (the calendar calls this per chunk)

    def __post_init__(self) -> None:
        if self.unit is None:
            self.unit = normalized(self.embeddings)

    def __call__(self, histories: np.ndarray, beams: Beams) -> Beams:
        return self.insertion.apply(self.embeddings, self.codes, self.new_items, histories, beams, unit=self.unit)


def observed_feedback(test: CaseSet, items: np.ndarray, cutoff: float, per_item: int | None) -> EditRequests:
    """Observed knowledge known before ``cutoff``: requests from ``test``'s cases with a timestamp < ``cutoff`` and a
    non-empty history whose target is one of ``items`` [m], at most ``per_item`` each (``case_histories``)."""
    return case_histories(test.subset(np.flatnonzero(test.timestamps < cutoff)), np.asarray(items, np.int64),
                          per_item)


def taught_items(artifact) -> np.ndarray:
    """[m] the items the requests of ``artifact``'s batches teach (none for None)."""
    if artifact is None or not artifact.batches:
        return np.zeros(0, np.int64)
    return np.unique(np.concatenate([b.requests.items for b in artifact.batches]).astype(np.int64))


def sample(index: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """A sorted seeded sample of at most ``n`` of ``index`` (all when ``n`` is None)."""
    return np.sort(index if n is None or len(index) <= n else rng.choice(index, n, replace=False))


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def artifact_bytes(artifact) -> tuple[int, float]:
    """Bytes on disk of ``artifact`` saved by its own ``save`` into a temp folder (then deleted), and the seconds the
    save took."""
    with tempfile.TemporaryDirectory(prefix="launch-calendar-") as tmp:
        t0 = time.perf_counter()
        artifact.save(Path(tmp) / "edits")
        seconds = time.perf_counter() - t0
        return sum(f.stat().st_size for f in (Path(tmp) / "edits").rglob("*") if f.is_file()), seconds


def parse_options(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """This bench's own options (``--insertion``, ``--reedit``, ``--no-text-edit``, ``--warm-panel``) and the rest
    for ``bench_setup``."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--insertion", type=Path, default=None,
                    help="a fitted calibrated insertion (JSON) merged into each list over the items arrived by then")
    ap.add_argument("--reedit", action="store_true",
                    help="re-edit each item once from its interactions observed before the round's day")
    ap.add_argument("--no-text-edit", action="store_true",
                    help="no edit from text on an item's first day (the insertion alone serves it until its "
                         "feedback edit, with --reedit)")
    ap.add_argument("--warm-panel", type=int, default=None,
                    help="warm test cases re-scored after every round (default: the size's warm_panel)")
    return ap.parse_known_args(argv)


def main(argv: list[str] | None = None) -> dict:
    opts, rest = parse_options(argv)
    args, cfg, out_dir, run = bench_setup(NAME, __doc__, rest)
    if opts.warm_panel is not None:
        cfg["warm_panel"] = opts.warm_panel
    hw = hardware()
    if run.config.knowledge.source not in TEXT_ONLY:
        raise ConfigError(f"the launch calendar edits an item on its first day from text only: knowledge.source must "
                          f"be one of {TEXT_ONLY}, got {run.config.knowledge.source!r}")
    insertion = CalibratedInsertion.load(opts.insertion) if opts.insertion is not None else None
    split, codes, device = run.prepared.split, run.prepared.codes, run.recommender.device
    trigger = run.config.eval.trigger
    per_item = run.config.knowledge.histories_per_item
    n_days = int(cfg["days"])
    cal = make_calendar(split, n_days, float(cfg.get("day_seconds", DAY_SECONDS)))
    edges, item_day = cal["edges"], cal["item_day"]
    first = first_seen(split)
    unit = normalized(run.prepared.embeddings) if insertion is not None else None

    def served(t: float) -> Served | None:
        """The insertion over the cold items arrived by ``t`` (None without ``--insertion``)."""
        if insertion is None:
            return None
        return Served(insertion, run.prepared.embeddings, codes, arrived(first, split.warm, t), t, unit)

    # the day's items in arrival order (ties by index), at most max_items_per_day of them
    cap = cfg.get("max_items_per_day")
    arrivals = [np.flatnonzero(item_day == d)[np.lexsort((np.flatnonzero(item_day == d),
                                                          first[item_day == d]))] for d in range(n_days)]
    day_items = [a if cap is None else a[: int(cap)] for a in arrivals]
    capped_out = np.concatenate([a[len(k):] for a, k in zip(arrivals, day_items)]).astype(np.int64)
    order = np.concatenate(day_items).astype(np.int64)
    t0 = time.perf_counter()
    requests = build_requests(run, order)  # arrival order: the hand-out never looks ahead
    knowledge_seconds = time.perf_counter() - t0
    editable = [np.intersect1d(items, requests.items) for items in day_items]

    rng = np.random.default_rng(int(cfg.get("seed", 0)))
    test = split.test
    case_day = day_of(edges, test.timestamps)
    day_case_idx = [sample(np.flatnonzero(case_day == d), cfg.get("cases_per_day"), rng) for d in range(n_days)]
    calendar_cases = test.subset(np.concatenate(day_case_idx).astype(np.int64))
    calendar_case_day = np.concatenate([np.full(len(i), d) for d, i in enumerate(day_case_idx)]).astype(np.int64)
    warm_panel = test.subset(sample(np.flatnonzero(split.warm[test.targets]), cfg.get("warm_panel"), rng))
    target_day = np.full(split.n_items, -1, np.int64)
    for d, items in enumerate(editable):
        target_day[items] = d
    # an item's panel cases come after its arrival day: the arrival day's cases are what re-edit may learn from
    after_arrival = (target_day[test.targets] >= 0) & \
        (test.timestamps >= edges[np.clip(target_day[test.targets] + 1, 0, n_days)])
    panel_idx = [sample(np.flatnonzero(after_arrival & (target_day[test.targets] == d)),
                        cfg.get("panel_cases_per_day"), rng) for d in range(n_days)]
    item_panel = test.subset(np.concatenate(panel_idx).astype(np.int64))
    panel_groups = {f"day {d + 1}": items for d, items in enumerate(editable)}
    everything = np.concatenate(editable).astype(np.int64)
    print(f"[{NAME}] {cal['mode']} from {iso(cal['start'])}: {n_days} days, {len(order):,} items "
          f"({len(everything):,} with requests, {len(requests):,} requests, {len(capped_out):,} over the per-day cap), "
          f"{len(calendar_cases):,} day cases, warm panel {len(warm_panel):,}, item panel {len(item_panel):,}; "
          f"insertion {opts.insertion or 'none'}, re-edit {'on' if opts.reedit else 'off'}, text edits "
          f"{'off' if opts.no_text_edit else 'on'}", flush=True)

    # the unedited model (plain beams), once: day cases, warm panel, item panel
    base_days, _, base_days_res = evaluate_detailed(run, calendar_cases)
    base_warm_panel, _, base_warm_panel_res = evaluate_detailed(run, warm_panel)
    base_items, _, _ = evaluate_detailed(run, item_panel, groups={**panel_groups, "all calendar items": everything})
    base_warm_by_case = base_days_res.per_case("ndcg@10", "overall")
    base_slots = base_days_res.per_case("iid_ratio@10", "overall")  # share of top-10 slots holding cold items
    warm_cases = ~split.is_cold(calendar_cases)
    base_panel_warm = base_warm_panel_res.per_case("ndcg@10", "warm")

    editor = make_editor(run)
    artifact, rounds, rows = None, [], []
    reedited = np.zeros(split.n_items, bool)
    morning_warm = []  # (edited, base) per-case warm N@10 of every scored day case, for the pooled drop
    for d in range(n_days):
        # 1. morning: day d's cases with the edits of rounds < d (and the insertion over the items arrived by now)
        n_batches = len(artifact.batches) if artifact else 0
        schedule = artifact.schedule(trigger, device) if artifact else None
        morning_served = served(edges[d])
        sel = calendar_case_day == d
        morning = None
        if sel.any():
            earlier = np.concatenate(editable[:d]).astype(np.int64) if d else np.zeros(0, np.int64)
            cases = calendar_cases.subset(sel)
            metrics, eval_s, res = evaluate_detailed(run, cases, schedule,
                                                     groups={"today's items": day_items[d],
                                                             "earlier days' items": earlier}, rerank=morning_served)
            edited_ndcg = res.per_case("ndcg@10", "overall")
            warm = warm_cases[sel]
            morning_warm.append((edited_ndcg[warm], base_warm_by_case[sel][warm]))
            morning = {"metrics": metrics, "eval_seconds": eval_s,
                       "warm_drop": drop_with_ci(edited_ndcg[warm], base_warm_by_case[sel][warm]),
                       "base_ndcg10_all": float(base_warm_by_case[sel].mean()),
                       "edited_ndcg10_all": float(edited_ndcg.mean()),
                       "cold_slot_share": float(res.per_case("iid_ratio@10", "overall").mean()),
                       "base_cold_slot_share": float(base_slots[sel].mean()),
                       "new_items_served": None if morning_served is None else int(len(morning_served.new_items))}
        # 2a. re-edit on feedback observed before day d's morning
        reedit = None
        if opts.reedit and d > 0:
            pending = np.concatenate(day_items[:d]).astype(np.int64)
            pending = pending[~reedited[pending]]
            feedback = observed_feedback(test, pending, edges[d], per_item)
            if len(feedback):
                due = np.unique(feedback.items)
                replace = np.intersect1d(due, taught_items(artifact))
                append = np.setdiff1d(due, replace)
                reports = []
                with measure() as m:
                    if len(replace):
                        artifact, reps = editor.replace_items(
                            artifact, replace, feedback.subset(np.flatnonzero(np.isin(feedback.items, replace))),
                            codes, split.item_ids)
                        reports += reps
                    if len(append):
                        artifact, rep = editor.edit(feedback.subset(np.flatnonzero(np.isin(feedback.items, append))),
                                                    codes, split.item_ids, previous=artifact)
                        reports.append(rep)
                update_s = float(sum(r.timings_s["update_total"] for r in reports))
                reedited[due] = True
                reedit = {"n_items": int(len(due)), "replaced": [split.item_ids[i] for i in replace],
                          "appended": [split.item_ids[i] for i in append], "n_requests": len(feedback),
                          "latest_feedback_time": float(test.timestamps[np.isin(test.targets, due)
                                                                        & (test.timestamps < edges[d])].max()),
                          "solves": len(reports), "update_seconds": update_s, "call_seconds": m.wall_seconds,
                          "cpu_seconds": m.cpu_seconds, "peak_rss_mb": m.peak_rss_mb}
        # 2b. edit day d's items from text on top of every earlier batch
        items = editable[d]
        edit = None
        if len(items) and not opts.no_text_edit:
            with measure() as m:
                artifact, report = editor.edit(requests.subset(np.flatnonzero(np.isin(requests.items, items))),
                                               codes, split.item_ids, previous=artifact)
            edit = {"n_items": report.n_items, "n_requests": report.n_requests,
                    "update_seconds": report.timings_s["update_total"], "timings_s": report.timings_s,
                    "edit_call_seconds": m.wall_seconds, "edit_cpu_seconds": m.cpu_seconds,
                    "peak_rss_mb": m.peak_rss_mb, "efficacy": report.efficacy, "layers": report.layers}
        changed = edit is not None or reedit is not None
        if changed:
            size, save_s = artifact_bytes(artifact)
            if edit:
                edit.update(artifact_bytes=size, save_seconds=save_s)
        else:
            size, save_s = (rounds[-1]["artifact_bytes"] if rounds else 0), None
        round_update = (edit["update_seconds"] if edit else 0.0) + (reedit["update_seconds"] if reedit else 0.0)
        round_call = (edit["edit_call_seconds"] if edit else 0.0) + (reedit["call_seconds"] if reedit else 0.0)
        # 3. after the round (the next morning's model): the panels
        schedule = artifact.schedule(trigger, device) if artifact else None
        after_served = served(edges[d + 1])
        panel, _, panel_res = evaluate_detailed(run, warm_panel, schedule, rerank=after_served)
        items_after, _, _ = evaluate_detailed(run, item_panel, schedule,
                                              groups={**panel_groups, "all calendar items": everything},
                                              rerank=after_served)
        rounds.append({"day": d + 1, "start": iso(edges[d]), "end": iso(edges[d + 1]),
                       "arrived_items": int(len(arrivals[d])), "edited_items": 0 if edit is None else int(len(items)),
                       "items": [split.item_ids[i] for i in items],
                       "batches_in_morning_model": n_batches,
                       "batches_after_edit": len(artifact.batches) if artifact else 0,
                       "day_cases": int(sel.sum()), "morning": morning, "reedit": reedit, "edit": edit,
                       "round_update_seconds": round_update if changed else None,
                       "round_call_seconds": round_call if changed else None,
                       "artifact_bytes": size, "save_seconds": save_s,
                       "after_edit": {"warm_panel": panel["warm"],
                                      "warm_panel_drop": drop_with_ci(panel_res.per_case("ndcg@10", "warm"),
                                                                      base_panel_warm),
                                      "new_items_served": None if after_served is None
                                      else int(len(after_served.new_items)),
                                      "items_recall10_by_arrival_day": {
                                          k: items_after[k]["recall@10"] for k in panel_groups},
                                      "items": items_after}})
        r = rounds[-1]
        wd = morning["warm_drop"] if morning else {"drop": None, "ci95": [None, None]}
        after = r["after_edit"]
        rows.append([d + 1, r["start"][:10] if cal["mode"] == "calendar days" else r["start"], len(arrivals[d]),
                     r["edited_items"], None if not reedit else reedit["n_items"], r["day_cases"],
                     None if not morning else morning["metrics"]["warm"]["ndcg@10"],
                     wd["drop"], None if wd["drop"] is None else f"[{wd['ci95'][0]:.3f}, {wd['ci95'][1]:.3f}]",
                     None if not morning else morning["metrics"]["today's items"]["recall@10"],
                     None if not morning else morning["metrics"]["earlier days' items"]["recall@10"],
                     None if not morning else morning["cold_slot_share"],
                     r["round_update_seconds"], size / 1e6,
                     after["items"][f"day {d + 1}"]["recall@10"], after["items"]["day 1"]["recall@10"],
                     after["warm_panel_drop"]["drop"]])
        print(f"[{NAME}] day {d + 1}: {r['edited_items']} items edited"
              + (f", {reedit['n_items']} re-edited" if reedit else "")
              + (f" in {round_update:.1f} s" if changed else "")
              + f", artifact {size / 1e6:.1f} MB, morning warm drop {wd['drop']}, warm panel drop "
              f"{after['warm_panel_drop']['drop']}, day-1 items R@10 {after['items']['day 1']['recall@10']}",
              flush=True)

    pooled = drop_with_ci(np.concatenate([e for e, _ in morning_warm]), np.concatenate([b for _, b in morning_warm])) \
        if morning_warm else None
    final = rounds[-1]["after_edit"]
    day1_first, day1_end = rounds[0]["after_edit"]["items"]["day 1"]["recall@10"], final["items"]["day 1"]["recall@10"]
    sizes = [r["artifact_bytes"] for r in rounds]
    growth = [b - a for a, b in zip(sizes, sizes[1:])]
    round_s = [r["round_update_seconds"] for r in rounds if r["round_update_seconds"] is not None]
    summary = {"pooled_morning_warm_drop": pooled, "final_warm_panel_drop": final["warm_panel_drop"],
               "day1_items_recall10_after_day1": day1_first, "day1_items_recall10_at_end": day1_end,
               "day1_items_kept": day1_end / day1_first if day1_first else None,
               "day1_items_recall10_unedited": base_items["day 1"]["recall@10"],
               "all_items_recall10_at_end": final["items"]["all calendar items"]["recall@10"],
               "all_items_recall10_unedited": base_items["all calendar items"]["recall@10"],
               "update_seconds": [r["edit"]["update_seconds"] if r["edit"] else None for r in rounds],
               "reedit_update_seconds": [r["reedit"]["update_seconds"] if r["reedit"] else None for r in rounds],
               "round_update_seconds": [r["round_update_seconds"] for r in rounds],
               "max_round_update_seconds": max(round_s) if round_s else None,
               "artifact_bytes": sizes, "max_growth_bytes_after_day1": max(growth) if growth else None,
               "reedited_items": int(reedited.sum())}
    rows.insert(0, [0, "unedited", None, None, None, len(calendar_cases), base_days["warm"]["ndcg@10"], None, None,
                    None, None, float(base_slots.mean()), None, 0.0, None, base_items["day 1"]["recall@10"], None])
    table = md_table(["day", "from", "arrived", "edited", "re-edited", "day cases", "warm N@10 (morning)",
                      "warm drop", "drop 95 % CI", "today's items R@10", "earlier items R@10", "cold top-10 share",
                      "round edit s", "artifact MB", "today's items R@10 after round", "day-1 items R@10 after round",
                      "warm panel drop after round"], rows)
    fp = final["warm_panel_drop"]
    cap_note = "no cap a day" if cap is None else f"{len(capped_out):,} over the cap of {cap} a day"
    recipe = ("the plain beams of the edited model" if insertion is None else
              f"the edited model's beams with the calibrated insertion {opts.insertion} (recent "
              f"{insertion.cfg.recent}, candidates {insertion.cfg.candidates}, margin {insertion.cfg.bias}) over the "
              "cold items arrived by that morning (never today's)")
    table += (
        f"\nBase {cfg['base']['run_dir']} ({split.protocol} split), knowledge {run.config.knowledge.source} "
        f"(n {per_item}), λ {run.config.edit.lam}, λ scale "
        f"{run.config.edit.lam_scale}, positions {run.config.edit.positions}, trigger {trigger}. Calendar: "
        f"{cal['mode']} from {iso(cal['start'])}, {n_days} days; {sum(len(a) for a in arrivals):,} items arrived, "
        + (f"{len(everything):,} with text requests, none edited from text (--no-text-edit); " if opts.no_text_edit
           else f"{len(everything):,} edited from text ({cap_note}, {len(order) - len(everything):,} without "
                "requests); ")
        + f"{len(cal['backlog']):,} cold items first seen before the test period and "
        f"{len(cal['after_calendar']):,} arriving after the calendar are never edited. Lists: {recipe}; the "
        "unedited reference is the plain beams. Morning columns: day d's test "
        f"cases ({cfg.get('cases_per_day') or 'all'} a day) scored with the edits of rounds < d; drop and its CI "
        "against the unedited model on the same warm cases (paired bootstrap); today's items are not edited yet. "
        + ("Re-edit: in round d every calendar item of days < d not re-edited yet is edited once from its test cases "
           f"before day d's morning (≤ {per_item} each), replacing its text-only edit "
           f"(ColdItemEditor.replace_items); {int(reedited.sum()):,} items re-edited. " if opts.reedit else
           "No item is re-edited from its feedback. ")
        + f"After-round columns: fixed panels scored with the edits of rounds ≤ d: {len(item_panel):,} test cases of "
        f"the edited items after their arrival day (≤ {cfg.get('panel_cases_per_day')} per arrival day) and "
        f"{len(warm_panel):,} warm test cases. Round edit s: update time (method.md §5.9) of the round's solves, "
        "re-edit included (day 1 includes the layer probe when edit.layer_policy runs one). "
        "Artifact MB: `EditArtifact.save` of all batches so far (the key statistic once, a file per batch). "
        "Row 0: the unedited model (day cases pooled).\n"
        f"\nPooled over all days' warm cases (each day's model): warm drop "
        + (f"{pooled['drop']:.4f} [{pooled['ci95'][0]:.4f}, {pooled['ci95'][1]:.4f}]" if pooled and pooled["drop"]
           is not None else "–")
        + "; after the last round, warm panel: "
        + (f"{fp['drop']:.4f} [{fp['ci95'][0]:.4f}, {fp['ci95'][1]:.4f}]" if fp["drop"] is not None else "–")
        + f". Day-1 items' R@10: {day1_first} after round 1, {day1_end} after round {n_days}.\n")
    data = {"size": args.size, "config": cfg, "hardware": hw, "trigger": trigger,
            "knowledge": run.config.knowledge.source, "knowledge_seconds": knowledge_seconds,
            "insertion": None if insertion is None else {"path": str(opts.insertion), **insertion.to_dict()["config"]},
            "reedit": bool(opts.reedit), "text_edits": not opts.no_text_edit,
            "calendar": {"mode": cal["mode"], "start": iso(cal["start"]), "end": iso(cal["end"]),
                         "edges": cal["edges"].tolist(), "days": n_days,
                         "arrived_items": int(sum(len(a) for a in arrivals)), "edited_items": int(len(everything)),
                         "capped_out_items": int(len(capped_out)), "backlog_items": int(len(cal["backlog"])),
                         "after_calendar_items": int(len(cal["after_calendar"])), "n_requests": len(requests)},
            "base": {"day_cases": base_days, "warm_panel": base_warm_panel, "items": base_items,
                     "cold_slot_share": float(base_slots.mean())},
            "panels": {"warm_panel_cases": len(warm_panel), "item_panel_cases": len(item_panel)},
            "summary": summary, "rounds": rounds}
    write_result(out_dir, NAME, data, table, f"Launch calendar ({args.size})")
    write_bytes(Path(out_dir) / f"{NAME}.png", plot_png(rounds, n_days))
    print(table)
    return data


def plot_png(rounds: list[dict], n_days: int) -> bytes:
    """Four panels against the day: warm drop (morning day cases and warm panel, with intervals), cold R@10 of
    arrival-day groups after each edit, edit seconds, artifact MB."""
    figure = Figure(figsize=(13.0, 8.0), dpi=100)
    FigureCanvasAgg(figure)
    (a, b), (c, e) = figure.subplots(2, 2)
    days = np.array([r["day"] for r in rounds])

    def band(ax, getter, label):
        vals = [getter(r) for r in rounds]
        keep = [i for i, v in enumerate(vals) if v is not None and v["drop"] is not None]
        if keep:
            y = np.array([vals[i]["drop"] for i in keep]) * 100
            lo = np.array([vals[i]["ci95"][0] for i in keep]) * 100
            hi = np.array([vals[i]["ci95"][1] for i in keep]) * 100
            ax.errorbar(days[keep], y, yerr=[y - lo, hi - y], marker="o", capsize=2, label=label)

    band(a, lambda r: r["morning"]["warm_drop"] if r["morning"] else None, "day d's cases, morning model")
    band(a, lambda r: r["after_edit"]["warm_panel_drop"], "warm panel, after day d's edit")
    a.axhline(0, color="grey", lw=0.5)
    a.set(title="warm N@10 drop (%), 95 % CI", xlabel="day")
    a.legend(fontsize="small")
    groups = [f"day {k}" for k in sorted({1, max(1, n_days // 2), n_days})]
    for g in groups:
        start = int(g.split()[1])
        y = [r["after_edit"]["items"][g]["recall@10"] for r in rounds if r["day"] >= start]
        if any(v is not None for v in y):
            b.plot(days[days >= start], [np.nan if v is None else v for v in y], marker=".", label=f"{g} items")
    y = [r["after_edit"]["items"]["all calendar items"]["recall@10"] for r in rounds]
    b.plot(days, [np.nan if v is None else v for v in y], marker=".", label="all calendar items")
    b.set(title="cold R@10 after round d (item panel)", xlabel="day")
    b.legend(fontsize="small")
    text_s = np.array([r["edit"]["update_seconds"] if r["edit"] else 0.0 for r in rounds])
    c.bar(days, text_s, label="text edit")
    c.bar(days, [r["reedit"]["update_seconds"] if r.get("reedit") else 0.0 for r in rounds], bottom=text_s,
          label="re-edit")
    c.set(title="round update seconds", xlabel="day")
    c.legend(fontsize="small")
    e.plot(days, [r["artifact_bytes"] / 1e6 for r in rounds], marker=".")
    e.set(title="artifact on disk (MB)", xlabel="day")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


if __name__ == "__main__":
    main()
