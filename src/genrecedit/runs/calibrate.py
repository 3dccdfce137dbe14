"""Re-fitting λ for the knowledge the shipped edit learns from (docs/method.md §5.11).

Selection (``sweep``) edits with the first half of the validation period's observed knowledge and scores the second
half. The edit that ships learns from the whole period: 1.9–2.7× the requests on our runs, and at a fixed λ its warm
cost grows with them (game: −3.0 % warm NDCG@10 on validation, −8.8 % on test at the selected λ). So the shipped
edit's own λ is re-fit on the same validation cases: the smallest λ, never below the selected one, whose shipped edit
keeps

* ``warm_drop`` (default): §5.10's own constraint, warm NDCG@10 drop ≤ the sweep's bound (5 %), or
* ``exposure``: the cold items' share of the top-10 slots on warm cases ≤ the chosen sweep cell's. It needs no
  label beyond which cases are warm, one edit gives the same exposure on validation and on later cases, and under
  ``preserve`` decoding the warm drop follows it; it is the stricter of the two on our runs.

The shipped edit memorises requests taken from the validation period itself (with observed knowledge: every
cold case of it, up to n per item), so a scored case whose (history, target) pair is one of those requests is left
out: the edit was taught that very answer, and scoring it would reward recall of its own knowledge. With observed
knowledge these are the second half's cold cases the edit learnt from; the warm-drop criterion reads warm cases
and the exposure criterion the cold share on warm cases, so neither needs them. ``calibrate.json`` counts them.

Only validation cases are decoded; the test set is never read.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from tqdm.auto import tqdm

from genrecedit.atomic import write_json
from genrecedit.data.dataset import PAD_ITEM, CaseSet
from genrecedit.errors import ConfigError
from genrecedit.edit.editor import EditMemory
from genrecedit.edit.knowledge import EditRequests
from genrecedit.runs.backbone import LoadedRun
from genrecedit.runs.evaluate import evaluate_model, evaluation_cases
from genrecedit.runs.selection import (build_requests, check_selection_knowledge, make_editor, metrics_row,
                                       warm_drop)


LAM_SPAN = 16.0  # the default search range: λ min … 16 × λ min
STEPS = 5  # bisections after the two ends: λ within 16 ** (1 / 32) ≈ 9 %


def _check_bracket(lam_min: float, lam_max: float, steps: int) -> None:
    if not 0 < lam_min < lam_max:
        raise ConfigError(f"calibration needs 0 < λ min < λ max, got {lam_min:g} and {lam_max:g}")
    if steps < 0:
        raise ConfigError(f"calibration steps must be ≥ 0, got {steps}")


def search_lam(measure: Callable[[float], float], target: float, lam_min: float, lam_max: float,
               steps: int) -> tuple[float | None, list[tuple[float, float]]]:
    """The smallest λ in [lam_min, lam_max] whose ``measure`` (exposure, falling as λ grows) is ≤ ``target``.

    Tries ``lam_max`` (None when even it exceeds the target), then ``lam_min`` (taken when it is within), then
    ``steps`` bisections in log λ. Returns the smallest λ tried that is within the target, and every (λ, value)
    tried in order. The answer is within a factor (lam_max / lam_min) ** (1 / 2**steps) of the crossing when
    ``measure`` is monotone; when it is not, it is still a λ that was measured within the target.
    """
    _check_bracket(lam_min, lam_max, steps)
    tried: list[tuple[float, float]] = []

    def within(lam: float) -> bool:
        value = measure(lam)
        tried.append((lam, value))
        return value <= target

    if not within(lam_max):
        return None, tried
    if within(lam_min):
        return lam_min, tried
    lo, hi = lam_min, lam_max  # lo exceeds the target, hi is within it
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if within(mid):
            hi = mid
        else:
            lo = mid
    return hi, tried


EXCLUDED_WHY = ("validation cases whose (history, target) pair is one of the re-fit batch's own edit requests "
                "(with observed knowledge: the cold cases the shipped edit learnt from); the edit memorised their "
                "answers, so they are not scored")


def taught_cases(cases: CaseSet, requests: EditRequests) -> np.ndarray:
    """[n] bool: the case's (history, target) is one of ``requests``' (history, item) pairs (histories compared
    without their padding)."""
    def key(history: np.ndarray, item) -> tuple:
        return int(item), history[history != PAD_ITEM].tobytes()

    taught = {key(h, i) for h, i in zip(np.asarray(requests.histories, np.int64), requests.items)}
    return np.fromiter((key(h, t) in taught for h, t in zip(np.asarray(cases.histories, np.int64), cases.targets)),
                       bool, len(cases))


def scored_cases(run: LoadedRun, requests: EditRequests) -> tuple[CaseSet, int]:
    """The validation cases a λ re-fit scores (``evaluation_cases`` less those ``taught_cases`` by ``requests``,
    the batch being re-fit) and how many were left out."""
    cases = evaluation_cases(run)
    taught = taught_cases(cases, requests)
    if taught.all():
        raise ConfigError(f"all {len(cases)} validation cases are requests of the edit being re-fit: none is left "
                          "to score λ on")
    return cases.subset(np.flatnonzero(~taught)), int(taught.sum())


Criterion = Literal["warm_drop", "exposure"]
CRITERIA: tuple[str, ...] = ("warm_drop", "exposure")
_TRIAL_KEY = {"warm_drop": "warm_ndcg10_drop", "exposure": "cold_exposure"}


def _check_by(by: str) -> None:
    if by not in CRITERIA:
        raise ConfigError(f"calibrate by one of {CRITERIA}, got {by!r}")


def from_sweep(sweep_json: dict, by: Criterion) -> tuple[float, float, int]:
    """(target, selected λ, selected n) from a ``sweep.json``: the bound on the warm drop, or the chosen cell's cold
    exposure. A clear error when the sweep chose nothing or predates what is asked."""
    _check_by(by)
    chosen = sweep_json.get("chosen")
    if not chosen:
        raise ConfigError("the sweep chose no cell (none kept the warm drop within bounds and raised overall "
                          "NDCG@10): there is nothing to re-fit")
    if by == "exposure":
        if "cold_exposure" not in chosen:
            raise ConfigError("this sweep.json predates cold exposure: rerun `genrecedit sweep`, or pass --target")
        target = float(chosen["cold_exposure"])
    else:
        target = float(sweep_json.get("max_warm_drop", 0.05))
    return target, float(chosen["lam"]), int(chosen["n"])


def calibrate(run: LoadedRun, target: float, out_dir: Path, by: Criterion = "warm_drop", lam_min: float = 100.0,
              lam_max: float | None = None, steps: int = STEPS, items: np.ndarray | None = None,
              memory: EditMemory | None = None) -> dict:
    """Smallest λ in [lam_min, lam_max] (default LAM_SPAN × lam_min) whose edit, built from the knowledge the
    shipped edit learns from, keeps ``by`` (warm NDCG@10 drop or cold exposure) on the validation cases at most
    ``target``. ``run.config.eval.cases`` must be ``valid``; ``items``: the items to inject (default: every item
    absent from training); ``memory``: the shipped batch already memorised by the caller (else memorised here);
    writes ``calibrate.json``. Cases that are requests of the batch are not scored (``taught_cases``).

    Returns {"by", "target", "chosen_lam" (None: even λ max exceeds the target), "base": metrics, "trials": [{lam,
    cold_exposure, warm_ndcg10_drop, metrics}], "n_requests", "n_cases" (scored), "n_cases_excluded",
    "excluded_why"}.
    """
    if run.config.eval.cases != "valid":
        raise ConfigError("calibration decodes validation cases only: run it with eval.cases=valid")
    _check_by(by)
    check_selection_knowledge(run)
    if not 0 < target < 1:
        raise ConfigError(f"the target ({by}) is a share in (0, 1), got {target:g}")
    lam_max = LAM_SPAN * lam_min if lam_max is None else lam_max
    _check_bracket(lam_min, lam_max, steps)  # before any decoding
    editor = make_editor(run)
    if memory is None:  # layers, keys and δ do not depend on λ: once
        # the requests of the edit that ships: with observed knowledge, the whole validation period
        memory = editor.memorize(build_requests(run, items, observed_from="whole"), run.prepared.codes)
    cases, n_excluded = scored_cases(run, memory.requests)
    base, _ = evaluate_model(run, cases, desc="calibrate: base")
    base_row = metrics_row(base.summary())
    trials: list[dict] = []
    bar = tqdm(total=steps + 2, desc="calibrate λ", unit="edit")

    def measure(lam: float) -> float:
        artifact, _ = editor.solve(memory, run.prepared.codes, run.prepared.split.item_ids, lam)
        edited, _ = evaluate_model(run, cases, artifact.schedule(run.config.eval.trigger, run.recommender.device),
                                   desc=f"calibrate: λ={lam:g}")
        row = metrics_row(edited.summary())
        trials.append({"lam": lam, "cold_exposure": edited.cold_exposure(10), "metrics": row,
                       "warm_ndcg10_drop": warm_drop(row, base_row)})
        bar.update()
        return trials[-1][_TRIAL_KEY[by]]

    chosen, _ = search_lam(measure, target, lam_min, lam_max, steps)
    bar.close()
    result = {"by": by, "target": target, "chosen_lam": chosen, "lam_min": lam_min, "lam_max": lam_max,
              "base": base_row, "trials": trials, "n": run.config.knowledge.histories_per_item,
              "n_requests": len(memory.requests), "n_cases": len(cases), "n_cases_excluded": n_excluded,
              "excluded_why": EXCLUDED_WHY, "trigger": run.config.eval.trigger}
    write_json(Path(out_dir) / "calibrate.json", result)
    return result


def format_calibration(result: dict) -> str:
    """The λ tried, in order, with exposure and warm drop, then the answer."""
    what = {"warm_drop": "warm NDCG@10 drop", "exposure": "cold exposure"}[result["by"]]
    lines = ["         λ  cold exposure  warm drop  cold R@10"]
    for t in result["trials"]:
        cold = t["metrics"]["cold"]["recall@10"]
        lines.append(f"{t['lam']:>10.4g}  {100 * t['cold_exposure']:>12.2f}%  {100 * t['warm_ndcg10_drop']:>+8.1f}%  "
                     + ("–" if cold is None else f"{cold:.4f}"))
    if result["chosen_lam"] is None:
        lines.append(f"no λ up to {result['lam_max']:g} keeps the {what} within {100 * result['target']:.2f}%: "
                     "raise --lam-max")
    else:
        lines.append(f"chosen λ = {result['chosen_lam']:.4g} ({what} ≤ {100 * result['target']:.2f}%, "
                     f"{result['n_requests']} requests, {result['n_cases']} validation cases"
                     + (f", {result['n_cases_excluded']} left out as requests of the edit"
                        if result.get("n_cases_excluded") else "") + ")")
    return "\n".join(lines)


def refit_lam(run: LoadedRun, out_dir: Path, items: np.ndarray | None = None,
              memory: EditMemory | None = None) -> dict:
    """``edit.refit`` for one run: calibrate from its λ up to LAM_SPAN × λ against ``edit.refit_bound``
    (warm_drop) or the exposure of the edit selection validated at λ (exposure; one more edit, scored on the same
    cases as the re-fit). ``memory``: the shipped batch, when the caller has memorised it (else memorised here).
    Writes ``calibrate.json`` into ``out_dir``; returns its
    result. A clear error when no λ in range keeps the bound."""
    by, lam = run.config.edit.refit, run.config.edit.lam
    check_selection_knowledge(run)
    valid = run.with_settings("eval", cases="valid")
    if memory is None:  # the shipped batch: its requests decide which validation cases are scored
        memory = make_editor(valid).memorize(build_requests(valid, items, observed_from="whole"), run.prepared.codes)
    if by == "exposure":
        artifact, _ = make_editor(valid).edit(build_requests(valid, items, observed_from="first_half"),
                                              run.prepared.codes, run.prepared.split.item_ids)
        selected, _ = evaluate_model(valid, scored_cases(valid, memory.requests)[0],
                                     artifact.schedule(run.config.eval.trigger, run.recommender.device),
                                     desc=f"refit: selection edit λ={lam:g}")
        target = selected.cold_exposure(10)
    else:
        target = run.config.edit.refit_bound
    result = calibrate(valid, target, out_dir, by, lam, LAM_SPAN * lam, STEPS, items, memory=memory)
    if result["chosen_lam"] is None:
        raise ConfigError(f"edit.refit: no λ up to {LAM_SPAN * lam:g} keeps the shipped edit's {by} on validation "
                          f"within {target:.4g} (see {Path(out_dir) / 'calibrate.json'}); raise edit.lam or drop "
                          "edit.refit")
    return result
