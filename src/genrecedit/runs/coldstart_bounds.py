"""The warm bound of the text-only cold start: what a shipped setting must keep on validation (``Bounds``), the
request mix it is held at (``WarmPlan``), the warm drop per kind of history (``strata_rows``) and the rules that
choose a prior's setting per kind (``choose_strata``, ``allocate_strata``). Used by ``runs.coldstart``."""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

from genrecedit.coldstart.exposure import exposure
from genrecedit.coldstart.prior import PriorConfig
from genrecedit.data.dataset import CaseSet, ends_with
from genrecedit.errors import ConfigError
from genrecedit.evaluation.report import EvalResult

CUT = 10  # the metrics and exposure that select and report: @10


@dataclass
class Bounds:
    """What a shipped setting must keep on validation: the warm NDCG@10 drop and the largest share of lists any one
    new item enters.

    ``stratified`` (the default) chooses a setting per stratum, the history's last item new or not
    (``PriorConfig.novel``), each the best of the grid within the bounds on that stratum's validation cases alone:
    a mixture of two lists that each keep the bound keeps it at any share of the two, so nothing about the next
    period's mix has to be guessed. Otherwise one setting serves every history and its drop is held at a planned
    mix: the warm drop is held for the request mix of the next period, not validation's average: the prior moves most
    where a history ends with a new item (there it replaces much of the list; elsewhere it moves almost nothing),
    and that share grows as new items accumulate (game: 3 % of warm validation cases in the period's first tenth,
    16 % in its last). So the drop is estimated per stratum (the history's last item new or not) and mixed at the
    strata's share in the latest ``plan_window`` of the validation period (None: validation's own mix).
    ``upper``: the bound holds for the upper end of that estimate's 95 % bootstrap interval (cases resampled within
    each stratum), not only for the estimate — the best of hundreds of cells is the one whose validation drop came
    out luckiest."""

    max_warm_drop: float = 0.03
    max_item_share: float = 0.05
    upper: bool = True
    plan_window: float | None = 0.2
    # one setting per stratum, each within the bounds on its own stratum's validation cases: the bound then holds
    # at any mix of the two (False: one setting for every history, held at the planned mix)
    stratified: bool = True
    plan_trend: bool = False  # plan at the share's trend extrapolated to the middle of the next period (WarmPlan.of)
    # stratified: hold the bound for the two strata together at the planned mix instead of within each stratum, so
    # the stratum that carries little of the warm NDCG (histories ending with a new item) may spend more of it
    allocate: bool = False


def _row(result: EvalResult, topk: np.ndarray, new: np.ndarray, base: EvalResult | None) -> dict:
    summary = result.summary()
    row = {s: {m: summary[s][m] for m in (f"recall@{CUT}", f"ndcg@{CUT}")} | {"n_cases": summary[s]["n_cases"]}
           for s in summary}
    row["exposure"] = exposure(topk, new, CUT)
    if base is not None:
        b = base.summary()["warm"][f"ndcg@{CUT}"] or 0.0
        row["warm_drop"] = 1 - (row["warm"][f"ndcg@{CUT}"] or 0.0) / max(b, 1e-12)
    return row


def _admissible(row: dict, bounds: Bounds) -> bool:
    """Within ``bounds``: the planned warm drop against the beams (and, where the row has it, against the cell's
    own re-ranked beams: a rule that does not spend the re-ranking's gain, ``InsertionGrid.rules``) and the largest
    share of lists a new item enters."""
    at = 1 if bounds.upper else 0
    drops = [row["warm_drop_planned"][at]]
    if "warm_drop_planned_rerank" in row:
        drops.append(row["warm_drop_planned_rerank"][at])
    return (all(d is not None and d <= bounds.max_warm_drop for d in drops)
            and row["exposure"]["max_item_share"] <= bounds.max_item_share)


@dataclass
class WarmPlan:
    """Validation's warm cases in strata (``novel``: the history's last item is new) and the share of the novel
    stratum the bound is held at (``share``)."""

    novel: np.ndarray  # [n_warm] bool, in the order of EvalResult.per_case(..., "warm")
    share: float

    @staticmethod
    def of(cases: CaseSet, new: np.ndarray, cold: np.ndarray, window: float | None,
           trend: bool = False) -> "WarmPlan":
        """``trend``: the share where its straight-line trend over the validation period (warm cases by time)
        reaches the middle of a next period as long, and never below the latest window's share."""
        novel = ends_with(cases.histories, new)
        warm = ~cold
        if window is None:
            recent = warm
        else:
            if not 0 < window <= 1:
                raise ConfigError(f"bounds.plan_window must be in (0, 1] or null, got {window}")
            cut = np.quantile(cases.timestamps[warm], 1 - window) if warm.any() else 0.0
            recent = warm & (cases.timestamps >= cut)
        share = float(novel[recent].mean()) if recent.any() else 0.0
        if trend and warm.sum() > 1:
            share = max(share, trend_share(cases.timestamps[warm], novel[warm]))
        return WarmPlan(novel[warm], share)

    def drop(self, result: EvalResult, base: EvalResult, below: float = float("inf"), n_boot: int = 1000,
             seed: int = 0) -> tuple[float, float | None]:
        """(estimate, upper end of its 95 % interval) of the warm NDCG@10 drop at the planned mix: per stratum the
        mean NDCG@10 of ``result`` and ``base``, mixed with weights (1 − share, share); the interval resamples cases
        within each stratum. The interval is computed only when the estimate is at most ``below`` (else None: it
        could not meet a bound the estimate misses)."""
        a, b = result.per_case(f"ndcg@{CUT}", "warm"), base.per_case(f"ndcg@{CUT}", "warm")
        strata = [(a[m], b[m], w) for m, w in ((~self.novel, 1 - self.share), (self.novel, self.share))
                  if m.any() and w > 0]
        return mixed_drop(strata, below, n_boot, seed)


def trend_share(times: np.ndarray, novel: np.ndarray) -> float:
    """The least-squares line of ``novel`` (0/1) over ``times``, read at the middle of a next period as long as
    theirs (clipped to [0, 1]): where the share of histories ending with a new item is heading."""
    t0, t1 = float(times.min()), float(times.max())
    if t1 <= t0:
        return float(novel.mean())
    slope, intercept = np.polyfit((times - t0) / (t1 - t0), novel.astype(float), 1)
    return float(np.clip(intercept + slope * 1.5, 0.0, 1.0))


def mixed_drop(strata: list[tuple[np.ndarray, np.ndarray, float]], below: float = float("inf"), n_boot: int = 1000,
               seed: int = 0) -> tuple[float, float | None]:
    """(estimate, upper end of its 95 % bootstrap interval) of 1 − Σ w·mean(a) / Σ w·mean(b) over strata
    (a, b, w): per-case NDCG@10 of a system and of the base on one stratum's warm cases, and the stratum's weight.
    Cases are resampled within each stratum; the interval only when the estimate is at most ``below``."""
    if not strata:
        return 0.0, 0.0

    def drop(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.where(den > 0, 1 - num / np.maximum(den, 1e-300), 0.0)

    point = drop(sum(w * a.mean() for a, _, w in strata), sum(w * b.mean() for _, b, w in strata))
    if point > below:
        return float(point), None
    num, den = np.zeros(n_boot), np.zeros(n_boot)
    for (a, b, w), counts in zip(strata, resample_counts(tuple(len(a) for a, _, _ in strata), n_boot, seed)):
        num += w * _resampled_mean(counts, a)
        den += w * _resampled_mean(counts, b)
    return float(point), float(np.quantile(drop(num, den), 0.975))


@functools.lru_cache(maxsize=8)
def resample_counts(sizes: tuple[int, ...], n_boot: int, seed: int) -> tuple[np.ndarray, ...]:
    """Per stratum of ``sizes`` cases, [n_boot, size] uint8: how often each case is drawn in each bootstrap
    resample (``rng.integers`` draws, stratum after stratum, in chunks of 100 resamples). Every cell of a grid is
    scored on the same cases with the same seed, so one set of draws serves all its intervals (cached)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        counts = np.zeros((n_boot, n), np.uint8)
        for start in range(0, n_boot, 100):
            rows = min(100, n_boot - start)
            idx = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
            counts[start:start + rows] = np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n)
        counts.flags.writeable = False
        out.append(counts)
    return tuple(out)


def _resampled_mean(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """[n_boot] the mean of ``values`` [n] in each resample of ``counts``: per-case NDCG is mostly 0, so only the
    cases with a value are read."""
    nz = np.flatnonzero(values)
    return counts[:, nz].astype(np.float64) @ values[nz] / max(len(values), 1)


STRATA = ("rest", "novel")  # the history's last item warm (or none) / new


def strata_masks(histories: np.ndarray, new: np.ndarray) -> dict[str, np.ndarray]:
    novel = ends_with(histories, new)
    return {"rest": ~novel, "novel": novel}


def strata_rows(result: EvalResult, base: EvalResult, topk: np.ndarray, new: np.ndarray,
                masks: dict[str, np.ndarray], below: float | dict[str, float] = float("inf")) -> dict:
    """Per stratum: cases, overall NDCG@10 of ``result`` and of ``base``, cold recall@10, the warm NDCG@10 drop
    with the upper end of its interval (when the estimate is at most ``below``, one value or one per stratum) and
    exposure on its lists."""
    a, b = result.per_case(f"ndcg@{CUT}", "overall"), base.per_case(f"ndcg@{CUT}", "overall")
    recall = result.per_case(f"recall@{CUT}", "overall")
    warm = ~result.cold_mask
    out = {}
    for name, mask in masks.items():
        if not mask.any():
            continue
        w, c = mask & warm, mask & ~warm
        limit = below.get(name, float("inf")) if isinstance(below, dict) else below
        drop, upper = mixed_drop([(a[w], b[w], 1.0)] if w.any() else [], limit)
        e = exposure(topk[mask], new, CUT)
        out[name] = {"n_cases": int(mask.sum()), "n_warm": int(w.sum()), "ndcg": float(a[mask].mean()),
                     "warm_ndcg": float(a[w].mean()) if w.any() else None,
                     "base_warm_ndcg": float(b[w].mean()) if w.any() else None,
                     "base_ndcg": float(b[mask].mean()), "cold_recall": float(recall[c].mean()) if c.any() else None,
                     "warm_drop": drop, "warm_drop_upper": upper, "max_item_share": e["max_item_share"],
                     "new_item_slot_share": e["new_item_slot_share"]}
    return out


def choose_strata(cells: list[dict], bounds: Bounds) -> dict | None:
    """The stratified setting: per stratum the cell with the best overall NDCG@10 on that stratum's cases among
    those within ``bounds`` there and above the unedited beams there; a stratum with none keeps the beam's lists.
    None when neither stratum has one."""
    best = {}
    for name in STRATA:
        ok = [c for c in cells if name in c["strata"] and _admissible_stratum(c["strata"][name], bounds)]
        best[name] = _best(ok, key=lambda c: c["strata"][name]["ndcg"])
    return _stratified(best["rest"], best["novel"])


def _stratified(rest: dict | None, novel: dict | None) -> dict | None:
    """One prior from a cell per stratum (None: that stratum keeps the beam's lists); None when both are None."""
    if rest is None and novel is None:
        return None
    second = dict(novel["prior"]) if novel is not None else {**asdict(PriorConfig()), "enabled": False}
    top = dict(rest["prior"]) if rest is not None else dict(second)
    return {**top, "enabled": True, "novel": second, "novel_only": rest is None}


def allocate_strata(cells: list[dict], bounds: Bounds, share: float) -> dict | None:
    """The stratified setting with one bound for both strata: the pair of cells (rest, novel; either may be "keep
    the beam's lists") with the best validation NDCG@10 over both strata's cases whose warm NDCG@10 drop, mixed at
    the planned share ``share`` of warm cases whose history ends with a new item, is within ``bounds`` — per
    stratum the upper end of its interval (``bounds.upper``) or the estimate, so the mix of upper ends bounds the
    mix from above. Each stratum is weighed by its share of the base's warm NDCG: where the backbone ranks warm
    items poorly (after a new item), a relative drop costs little. Exposure and "beats the beams" hold per stratum.
    None when no pair beats the beams."""
    key = "warm_drop_upper" if bounds.upper else "warm_drop"
    options: dict[str, list[tuple[dict | None, float, float]]] = {}
    totals = {}  # per stratum: validation cases, the base's mean warm NDCG@10
    for name in STRATA:
        rows = [(c, c["strata"][name]) for c in cells if name in c.get("strata", {})]
        if not rows:
            options[name], totals[name] = [(None, 0.0, 0.0)], (0, 0.0)
            continue
        row0 = rows[0][1]
        totals[name] = (row0["n_cases"], row0["base_warm_ndcg"] or 0.0)
        options[name] = [(None, 0.0, row0["base_ndcg"])] + [
            (c, r[key], r["ndcg"]) for c, r in rows
            if r[key] is not None and r["max_item_share"] <= bounds.max_item_share and r["ndcg"] > r["base_ndcg"]]
    (n_r, bw_r), (n_n, bw_n) = totals["rest"], totals["novel"]
    den = (1 - share) * bw_r + share * bw_n
    m_n = share * bw_n / den if den > 0 else 0.0
    d_r = np.array([o[1] for o in options["rest"]])
    d_n = np.array([o[1] for o in options["novel"]])
    v_r = np.array([o[2] for o in options["rest"]]) * n_r
    v_n = np.array([o[2] for o in options["novel"]]) * n_n
    planned = (1 - m_n) * d_r[:, None] + m_n * d_n[None, :]
    value = np.where(planned <= bounds.max_warm_drop, v_r[:, None] + v_n[None, :], -np.inf)
    value[0, 0] = -np.inf  # both strata on the beam's lists: no prior
    i, j = np.unravel_index(int(np.argmax(value)), value.shape)
    if not np.isfinite(value[i, j]):
        return None
    return _stratified(options["rest"][i][0], options["novel"][j][0])


def _admissible_stratum(row: dict, bounds: Bounds) -> bool:
    drop = row["warm_drop_upper"] if bounds.upper else row["warm_drop"]
    return (drop is not None and drop <= bounds.max_warm_drop and row["max_item_share"] <= bounds.max_item_share
            and row["ndcg"] > row["base_ndcg"])


def _best(cells: list[dict], key=lambda c: c["metrics"]["overall"][f"ndcg@{CUT}"]) -> dict | None:
    return max(cells, key=key, default=None)
