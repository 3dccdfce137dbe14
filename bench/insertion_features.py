"""Would the calibrated insertion reach more cold targets within the warm bound with more of what the backbone
knows, or with more proposals? Validation only (no test case is read).

    PYTHONPATH=bench python bench/insertion_features.py --run runs/game \
        [--variants base10,bs10,tf10,bstf10,base20,bstf20] [--objective cold|overall]

Variants add features to the proposal model (``coldstart/insertion.py``'s ``NEW_FEATURES``) or change the number of
proposals (the digits: ``candidates``):

- ``bs``: the proposal's largest cosine to the beam's items, that item's beam score (relative to the beam's mass),
  and the beam-probability-weighted mean cosine (is the new item like what the backbone predicts?);
- ``hx``: the whole history and catalogue (``history_features``): the history's share of new items, the
  proposal's best cosine to the history's last five items, its rank among every catalogue item by cosine to the last
  item and its margin over the last item's best warm neighbour;
- ``gb``: both log-odds models gradient-boosted trees (scikit-learn) instead of logistic fits;
- ``tf``: the backbone's teacher-forced log-probability of the proposal's SID prefix at depth 1, 2 and in full
  (unconstrained by the trie): what the backbone expects beyond the prefixes its beam kept;
- ``rr``: the beam's items re-ordered by the warm model, which also reads their own content similarity to the
  history (``InsertionConfig.rerank``): warm NDCG gained there is warm drop the insertion may spend;
- ``r3``: the history's content is the mean of its last 3 items instead of its last one;
- ``pp``: the proposal's popularity as its text predicts it (``text_popularity``: a ridge regression from the
  embedding to the log-count of training interactions, fitted on warm items);
- ``wp``: each beam item's log-count of training interactions, whole period and its last quarter, read by a
  re-ranking warm model (``InsertionConfig.popularity``, the counts of ``item_counts``; only with ``rr``);
- ``lm``: a learnt successor score (``successor_score``: a low-rank map fitted on the training split's warm
  transitions, last item → next item, then read from the new items' text).

Per variant: the margin curve on cross-fitted lists of the whole validation period (overall NDCG@10, warm drop,
the planned drop's upper end, cold Recall@10, exposure), the margin ``genrecedit coldstart``'s rule would choose
there (``--objective``, as ``genrecedit coldstart --objective``; the floor of the cold objective is the baselines'
best overall NDCG@10 within the bounds on the same cases; ``--point``: the warm bound held at the estimate instead
of its interval's upper end), and the rule check of ``bench/coldstart_rules.py``: the margin chosen on the
period's first half (by time), models fitted on it, scored on the second half. Writes
``<out>/insertion_features.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from common import hardware, md_table, write_result
from genrecedit.coldstart.insertion import (CalibratedInsertion, InsertionConfig, LogOdds, Proposals, cross_fitted,
                                           propose)
from genrecedit.coldstart.prior import content_vectors, normalized
from genrecedit.data.dataset import PAD_ITEM
from genrecedit.evaluation.baselines import train_counts
from genrecedit.model.beam import sid_log_probs
from genrecedit.runs.backbone import load_run
from genrecedit.runs.coldstart import (OBJECTIVES, ColdstartSpec, InsertionGrid, baseline_cells, baseline_floor,
                                       decode, item_counts, new_items, pick_insertion, selection_cases)
from genrecedit.runs.coldstart_bounds import CUT, Bounds, WarmPlan, _row
from genrecedit.evaluation.report import EvalResult
from genrecedit.runs.evaluate import score_topk

NAME = "insertion_features"
BIASES = tuple(float(b) for b in InsertionGrid().bias)


@torch.no_grad()
def proposal_log_probs(rec, histories: np.ndarray, cand: np.ndarray, batch: int = 512) -> np.ndarray:
    """[n, J, P] teacher-forced log P(code_p | h, code_<p) of each proposal's SID (padding rows: item 0's)."""
    n, j = cand.shape
    p = rec.layout.n_positions
    out = np.zeros((n, j, p), np.float32)
    for s in range(0, n, batch):
        ids, mask = rec.layout.encoder_inputs(histories[s:s + batch], rec.codes)
        enc = rec.decoder.encode(ids.to(rec.device), mask.to(rec.device))
        codes = torch.from_numpy(rec.codes[np.clip(cand[s:s + batch], 0, None)].reshape(-1, p)).to(rec.device)
        out[s:s + len(ids)] = sid_log_probs(rec.decoder, rec.layout, enc, codes, j).view(len(ids), j, p).cpu().numpy()
    return out


def beam_similarity(unit: np.ndarray, props: Proposals, chunk: int = 2048) -> np.ndarray:
    """[n, J, 3]: a proposal's largest cosine to the beam's items, that item's score relative to the beam's mass,
    and the beam-probability-weighted mean cosine."""
    out = []
    for s in range(0, len(props.items), chunk):
        c, b = props.items[s:s + chunk], props.beam_items[s:s + chunk]
        rel = props.beam_features[s:s + chunk, :, 1]
        sim = np.einsum("njd,nkd->njk", unit[np.clip(c, 0, None)], unit[np.clip(b, 0, None)])
        sim = np.where((b >= 0)[:, None, :], sim, -1.0)
        w = np.exp(rel - rel.max(1, keepdims=True)) * (b >= 0)
        w = w / w.sum(1, keepdims=True)
        arg = sim.argmax(-1)
        out.append(np.stack([sim.max(-1), np.take_along_axis(rel, arg, 1), (w[:, None, :] * sim).sum(-1)], -1))
    return np.concatenate(out).astype(np.float64)


def history_features(unit: np.ndarray, histories: np.ndarray, new: np.ndarray, props: Proposals, window: int = 5,
                     chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """What the whole history and the whole catalogue say, beyond the last item: per proposal [n, J, 4] the share
    of new items in the history (an early adopter?), the proposal's largest cosine to the history's last ``window``
    items (a sequel of an earlier item?), the log of its rank among *every* catalogue item by cosine to the last item
    (is it the last item's nearest neighbour, warm ones included?) and its cosine less the last item's best warm
    neighbour's; per beam item [n, K, 1] the share of new items in the history."""
    valid = histories != PAD_ITEM
    share = (np.isin(histories, new) & valid).sum(1) / np.maximum(valid.sum(1), 1)
    warm = np.ones(len(unit), bool)
    warm[new] = False
    out = []
    for s in range(0, len(histories), chunk):
        h, c = histories[s:s + chunk], np.clip(props.items[s:s + chunk], 0, None)
        rec = h[:, -window:]
        sim_h = np.einsum("njd,nwd->njw", unit[c], unit[np.clip(rec, 0, None)])
        sim_h = np.where((rec != PAD_ITEM)[:, None, :], sim_h, -1.0).max(-1)
        last = np.clip(h[:, -1], 0, None)
        all_sims = unit[last] @ unit.T  # [n, N]
        all_sims[np.arange(len(h)), last] = -np.inf  # the last item itself is no neighbour
        sim_c = np.take_along_axis(all_sims, c, 1)
        rank = (all_sims[:, None, :] > sim_c[:, :, None]).sum(-1)
        best_warm = np.where(warm[None], all_sims, -np.inf).max(1)
        empty = (h[:, -1] == PAD_ITEM)[:, None]
        out.append(np.stack([np.broadcast_to(share[s:s + chunk, None], c.shape), sim_h,
                             np.where(empty, np.log1p(len(unit)), np.log1p(rank)),
                             np.where(empty, 0.0, sim_c - best_warm[:, None])], -1))
    beam_extra = np.broadcast_to(share[:, None, None], (*props.beam_items.shape, 1))
    return np.concatenate(out).astype(np.float64), beam_extra.astype(np.float64)


def text_popularity(run, unit: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """[n, J, 1]: each proposal's log-count of training interactions as its text predicts it (a ridge regression
    from the normalised embeddings, fitted on the warm items' training counts; alpha by cross-validation)."""
    from sklearn.linear_model import RidgeCV

    split = run.prepared.split
    warm = np.flatnonzero(split.warm)
    y = np.log1p(train_counts(split)[warm])
    model = RidgeCV(alphas=np.logspace(-2, 3, 12)).fit(unit[warm], y)
    pred = model.predict(unit)
    z = (pred - pred[warm].mean()) / pred[warm].std()
    return np.where(cand >= 0, z[np.clip(cand, 0, None)], 0.0)[..., None].astype(np.float64)


def successor_score(run, unit: np.ndarray, histories: np.ndarray, cand: np.ndarray, recent: int, rank: int = 64,
                    epochs: int = 8, seed: int = 0) -> np.ndarray:
    """[n, J, 1]: a learnt successor score of each proposal, h's content · A Bᵀ · the proposal's embedding, with the
    low-rank map A Bᵀ fitted (softmax over warm items, added to the cosine) on the training split's transitions from
    a warm last item to a warm next item: what follows what, learnt on warm items and read from new items' text."""
    torch.manual_seed(seed)
    split = run.prepared.split
    tr = split.train
    last = tr.histories[:, -1]
    ok = (last != PAD_ITEM) & split.warm[np.clip(last, 0, None)] & split.warm[tr.targets]
    warm = np.flatnonzero(split.warm)
    pos = np.full(split.n_items, -1)
    pos[warm] = np.arange(len(warm))
    x, y = torch.tensor(unit[last[ok]], dtype=torch.float32), torch.tensor(pos[tr.targets[ok]])
    uw = torch.tensor(unit[warm], dtype=torch.float32)
    a = torch.nn.Parameter(torch.zeros(unit.shape[1], rank))
    b = torch.nn.Parameter(torch.randn(unit.shape[1], rank) * 0.01)
    log_t = torch.nn.Parameter(torch.tensor(np.log(20.0), dtype=torch.float32))
    opt = torch.optim.Adam([a, b, log_t], lr=3e-3)
    with torch.enable_grad():
        for _ in range(epochs):
            for i in torch.randperm(len(x)).split(512):
                logits = log_t.exp() * (x[i] @ uw.T + (x[i] @ a) @ (uw @ b).T)
                loss = torch.nn.functional.cross_entropy(logits, y[i]) + 1e-4 * (a.pow(2).sum() + b.pow(2).sum())
                opt.zero_grad()
                loss.backward()
                opt.step()
    with torch.no_grad():
        h = content_vectors(torch.tensor(unit), histories, recent).float() @ a  # [n, r]
        c = torch.tensor(unit[np.clip(cand, 0, None)], dtype=torch.float32) @ b  # [n, J, r]
        out = torch.einsum("nr,njr->nj", h, c).double().numpy()
    return np.where(cand >= 0, out, 0.0)[..., None]


class BoostedOdds:
    """A gradient-boosted stand-in for ``LogOdds`` (same call: [..., f] -> [...] log-odds)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                                    min_samples_leaf=100, random_state=0).fit(x, y)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.model.decision_function(x.reshape(-1, x.shape[-1])).reshape(x.shape[:-1])


def boosted():
    """Within it, the insertion's two log-odds models are gradient-boosted trees instead of logistic fits."""
    return mock.patch.object(LogOdds, "fit", staticmethod(lambda x, y, c: BoostedOdds(x, y)))


def with_features(props: Proposals, extra: np.ndarray | None = None,
                  beam_extra: np.ndarray | None = None) -> Proposals:
    """``props`` with ``extra`` proposal features and ``beam_extra`` beam-item features appended (None: none)."""
    new = props.features if extra is None else np.concatenate([props.features, extra], -1)
    beam = props.beam_features if beam_extra is None else np.concatenate([props.beam_features, beam_extra], -1)
    return Proposals(props.items, new, props.beam_items, beam, props.beam_content)


def curve(run, cases, props, base, new, width, bounds, rerank: bool = False,
          counts: np.ndarray | None = None) -> list[dict]:
    """Cells as ``select_insertion`` makes them: per margin the cross-fitted lists scored, with the planned drop
    (``counts``: the warm model reads the items' training counts, ``InsertionConfig.popularity``)."""
    plan = WarmPlan.of(cases, new, base.cold_mask, bounds.plan_window, trend=True)
    cfg = InsertionConfig(candidates=props.items.shape[1], width=width, rerank=rerank, popularity=counts is not None)
    cells = []
    for bias, topk in cross_fitted(props, cases.targets, cases.timestamps, cfg, BIASES, width, counts).items():
        res = score_topk(run, topk, cases)
        row = _row(res, topk, new, base)
        row["warm_drop_planned"] = plan.drop(res, base, below=bounds.max_warm_drop)
        cells.append({"bias": bias, "metrics": row})
    return cells


def chosen(cells: list[dict], base: EvalResult, bounds: Bounds, objective: str, floor: float) -> dict | None:
    """The cell ``select_insertion``'s rule picks (``pick_insertion``)."""
    return pick_insertion(cells, base.summary()["overall"][f"ndcg@{CUT}"], bounds, objective, floor)


def summary(cell: dict | None) -> dict | None:
    if cell is None:
        return None
    row = cell["metrics"]
    up = (row.get("warm_drop_planned") or (None, None))[1]
    return {"bias": cell["bias"], "overall_ndcg@10": row["overall"][f"ndcg@{CUT}"], "warm_drop": row["warm_drop"],
            "planned_drop_upper": up, "cold_recall@10": row["cold"][f"recall@{CUT}"],
            "new_item_slot_share": row["exposure"]["new_item_slot_share"],
            "max_item_share": row["exposure"]["max_item_share"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--variants", default="base10,bs10,tf10,bstf10,base20,bstf20")
    ap.add_argument("--objective", default="cold", choices=OBJECTIVES)
    ap.add_argument("--point", action="store_true", help="hold the warm bound at the estimate, not its upper end")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    run = load_run(args.run, [f"threads={args.threads}"])
    cases = selection_cases(run, None, whole=True)
    new = new_items(run)
    beams = decode(run, cases, None, "validation beams")
    items, width = beams.items.numpy(), beams.items.shape[1]
    base = score_topk(run, items, cases)
    bounds = Bounds(upper=not args.point)
    early = cases.timestamps < np.median(cases.timestamps)
    E, L = cases.subset(early), cases.subset(~early)
    base_e, base_l = score_topk(run, items[early], E), score_topk(run, items[~early], L)
    spec = ColdstartSpec()
    floor = baseline_floor(baseline_cells(run, cases, items, base, spec), bounds)
    floor_e = baseline_floor(baseline_cells(run, E, items[early], base_e, spec), bounds)
    unit = normalized(run.prepared.embeddings).numpy()
    results = {}
    for v in (s.strip() for s in args.variants.split(",") if s.strip()):
        j = int(re.search(r"(\d*)$", v).group(1) or 10)  # the trailing digits (``r3_10``: 10 proposals)
        t0 = time.perf_counter()
        recent = 3 if "r3" in v else 1
        props = propose(run.prepared.embeddings, run.prepared.codes, new, cases.histories, beams, recent, j)
        if "bs" in v:
            props = with_features(props, beam_similarity(unit, props))
        if "hx" in v:
            props = with_features(props, *history_features(unit, cases.histories, new, props))
        if "pp" in v:
            props = with_features(props, text_popularity(run, unit, props.items))
        if "lm" in v:
            props = with_features(props, successor_score(run, unit, cases.histories, props.items, recent))
        if "tf" in v:
            cum = np.cumsum(proposal_log_probs(run.recommender, cases.histories, props.items), -1)
            props = with_features(props, cum[..., [0, 1, cum.shape[-1] - 1]].astype(np.float64))
        feature_s = time.perf_counter() - t0
        with (boosted() if "gb" in v else contextlib.nullcontext()):
            rr = "rr" in v
            counts = item_counts(run) if "wp" in v else None
            cells = curve(run, cases, props, base, new, width, bounds, rr, counts)
            pick = chosen(curve(run, E, props.rows(early), base_e, new, width, bounds, rr, counts), base_e, bounds,
                          args.objective, floor_e)
            later = None
            if pick is not None:
                cfg = InsertionConfig(recent=recent, candidates=j, width=width, bias=pick["bias"], rerank=rr,
                                      popularity=counts is not None)
                fitted = CalibratedInsertion.fit(props.rows(early), E.targets, cfg, counts)
                topk = fitted.rank(props.rows(~early), width)[0]
                later = summary({"bias": pick["bias"], "metrics": _row(score_topk(run, topk, L), topk, new, base_l)})
        results[v] = {"features": int(props.features.shape[-1]), "feature_seconds": feature_s,
                      "curve": [summary(c) for c in cells],
                      "chosen": summary(chosen(cells, base, bounds, args.objective, floor)),
                      "later": later}
        print(v, "chosen", results[v]["chosen"], "later", later, flush=True)

    def line(v: str, what: str, r: dict | None) -> list:
        if r is None:
            return [v, what, None, None, None, None, None]
        return [v, what, r["bias"], r["overall_ndcg@10"], r["warm_drop"], r["cold_recall@10"], r["max_item_share"]]

    table = md_table(["variant", "scored on", "margin", "overall N@10", "warm drop", "cold R@10", "max item share"],
                     [line(v, "validation (cross-fitted), rule's margin", r["chosen"]) for v, r in results.items()]
                     + [line(v, "later half, margin from the first", r["later"]) for v, r in results.items()])
    write_result(args.out, NAME, {"run": str(args.run), "n_cases": len(cases), "n_cold": int(base.cold_mask.sum()),
                                  "base_overall_ndcg@10": base.summary()["overall"][f"ndcg@{CUT}"],
                                  "objective": args.objective, "baseline_floor": floor, "upper": bounds.upper,
                                  "results": results, "hardware": hardware()},
                 table, f"Calibrated insertion: more features / proposals ({args.run})")
    print(table)


if __name__ == "__main__":
    main()
