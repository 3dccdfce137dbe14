"""Layer location (docs/method.md §5.3, paper §4.2.1): per position, the decoder layer whose FFN keys best separate edit
requests from training samples under a linear probe; plus the ablation policies."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from scipy.stats import t as student_t
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from genrecedit.edit.logistic import fit_logistic

LayerPolicy = Literal["probe", "fixed", "random", "worst"]
ProbeBackend = Literal["torch", "sklearn"]
PROBE_C = 1.0  # inverse L2 strength of the probe's logistic regression (scikit-learn's C; its default)


@dataclass
class ProbeTable:
    """accuracy [P, L]: mean balanced accuracy of the probe at (position, layer) over its grouped folds; folds
    [P, L, k]: the per-fold accuracies, NaN where a position had fewer folds (the same folds for every layer of a
    position, so layers compare paired)."""

    accuracy: np.ndarray
    folds: np.ndarray

    @staticmethod
    def from_folds(folds: np.ndarray) -> "ProbeTable":
        return ProbeTable(np.nanmean(folds, axis=-1), folds)

    def stderr(self) -> np.ndarray:
        """[P, L] standard error of each mean accuracy over its folds (0 with a single fold)."""
        return np.array([[_stderr(f) for f in row] for row in self.folds])

    def best_layers(self, default: list[int] | None = None, alpha: float | None = None) -> list[int]:
        """Per position, the layer of highest mean accuracy (the paper's choice). With ``default`` and ``alpha``,
        that layer replaces ``default[p]`` only when a one-sided paired t-test over the folds says it is better at
        level ``alpha`` (Bonferroni over the L - 1 other layers; fold variance corrected as Nadeau & Bengio do for
        k-fold estimates, whose training sets overlap). Otherwise the probe has not resolved a better layer and the
        default stays: leads of a few thousandths are noise, and the plain argmax followed them (on game,
        position 0 went from layer 3 to layer 1 between 1 and 2 BLAS threads)."""
        out = []
        for p, row in enumerate(self.accuracy):
            best = int(np.argmax(row))
            if default is not None and alpha is not None and best != default[p]:
                if not _resolved(self.folds[p, best] - self.folds[p, default[p]], alpha / max(len(row) - 1, 1)):
                    best = default[p]
            out.append(best)
        return out

    def worst_layers(self) -> list[int]:
        return [int(np.argmin(row)) for row in self.accuracy]

    def to_dict(self, default: list[int] | None = None, alpha: float | None = None) -> dict:
        return {"accuracy": self.accuracy.round(4).tolist(), "stderr": self.stderr().round(4).tolist(),
                "argmax_layers": self.best_layers(), "best_layers": self.best_layers(default, alpha)}


def fit_small(clf, x: np.ndarray, y: np.ndarray):
    """Fit a small sklearn classifier (the layer probe's sklearn backend) on one BLAS thread, convergence warnings
    silenced. With two threads these fits were 7× slower on 2 cores and their numbers moved with the thread count
    (enough to flip the probe's argmax layer on game)."""
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(x, y)


def _stderr(values: np.ndarray) -> float:
    v = values[~np.isnan(values)]
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def _resolved(diff: np.ndarray, alpha: float) -> bool:
    """One-sided corrected paired t-test that the mean of per-fold differences ``diff`` is above 0 at ``alpha``.
    With k folds the variance of the mean is (1/k + 1/(k-1))·s² rather than s²/k (Nadeau & Bengio 2003)."""
    d = diff[~np.isnan(diff)]
    k = len(d)
    if k < 2 or d.mean() <= 0:
        return False
    var = d.var(ddof=1) * (1 / k + 1 / (k - 1))
    if var == 0:
        return True
    return bool(student_t.sf(d.mean() / np.sqrt(var), df=k - 1) < alpha)


def probe_accuracy(positives: torch.Tensor, negatives: torch.Tensor, pos_groups: np.ndarray,
                   neg_groups: np.ndarray, seed: int, folds: int = 5, backend: ProbeBackend = "torch") -> np.ndarray:
    """[folds] balanced accuracies of a linear probe on one layer's keys: ``probe_folds`` with L = 1."""
    return probe_folds(positives[None], negatives[None], pos_groups, neg_groups, seed, folds, backend)[0]


def probe_folds(positives: torch.Tensor, negatives: torch.Tensor, pos_groups: np.ndarray, neg_groups: np.ndarray,
                seed: int, folds: int = 5, backend: ProbeBackend = "torch",
                device: torch.device | str | None = None) -> np.ndarray:
    """[L, k] balanced accuracies of a linear probe per layer and fold: keys of requests [L, m, d_ff] (label 1) vs
    training keys [L, n, d_ff] (label 0) at the L layers of one position, each fold held out once (k = ``folds``,
    fewer when there are fewer items). Classes are balanced by subsampling the larger; the folds are grouped by item
    (no item on both sides) and stratified by label. The subsample and the folds depend on the seed and the sizes
    only, so every layer is scored on the same folds.

    The probe is ``StandardScaler`` + L2 logistic regression at C = ``PROBE_C`` (lbfgs, tol 1e-3, ≤ 200
    iterations; a not-quite-converged probe still ranks layers). ``backend="torch"`` fits all L × k problems at
    once on ``device`` (default: the keys'; ``logistic.fit_logistic``, scikit-learn's objective and stopping rule);
    ``"sklearn"`` fits them one by one with scikit-learn on the CPU (the reference)."""
    if backend not in ("torch", "sklearn"):
        raise ValueError(f"probe backend must be 'torch' or 'sklearn', got {backend!r}")
    rng = np.random.default_rng(seed)
    n = min(positives.shape[1], negatives.shape[1])
    pi = rng.choice(positives.shape[1], n, replace=False)
    ni = rng.choice(negatives.shape[1], n, replace=False)
    y = np.concatenate([np.ones(n), np.zeros(n)])
    # offset negative groups so a positive item and a negative item never share a group id by accident
    groups = np.concatenate([pos_groups[pi], neg_groups[ni] + int(pos_groups.max()) + 1])
    n_layers = positives.shape[0]
    n_groups = min(len(np.unique(groups[:n])), len(np.unique(groups[n:])))
    if n_groups < 2:
        return np.full((n_layers, folds), 0.5)  # too few groups to tell; an uninformative score rather than an error
    k = min(folds, n_groups)
    splits = grouped_folds(y, groups, k, seed)
    # a fold with one class on either side cannot be scored
    scorable = np.array([len(np.unique(y[tr])) == 2 and len(np.unique(y[te])) == 2 for tr, te in splits])
    x = torch.cat([positives[:, pi], negatives[:, ni]], 1)
    if backend == "sklearn":
        accs = np.full((n_layers, k), 0.5)
        xs = x.numpy()
        for layer in range(n_layers):
            for f, (tr, te) in enumerate(splits):
                if scorable[f]:
                    clf = fit_small(make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=200,
                                                                                       tol=1e-3)),
                                    xs[layer, tr], y[tr])
                    accs[layer, f] = balanced_accuracy_score(y[te], clf.predict(xs[layer, te]))
        return accs
    x = x.to(positives.device if device is None else device)
    train = np.zeros((k, 2 * n), dtype=bool)
    for f, (tr, _) in enumerate(splits):
        train[f, tr] = True
    train_t = torch.from_numpy(train).to(x.device)
    y_t = torch.from_numpy(y).to(x.device, torch.bool)
    fit = fit_logistic(x, y_t, train_t, C=PROBE_C, tol=1e-3, max_iter=200)
    pred = fit.decision(x) > 0  # [L, k, 2n]
    test = ~train_t
    # balanced accuracy: the mean of the two classes' recalls on each held-out fold
    recall_pos = (pred & test & y_t).sum(-1) / (test & y_t).sum(-1).clamp_min(1)
    recall_neg = (~pred & test & ~y_t).sum(-1) / (test & ~y_t).sum(-1).clamp_min(1)
    accs = (0.5 * (recall_pos + recall_neg)).double().cpu().numpy()
    accs[:, ~scorable] = 0.5
    return accs


def grouped_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """``StratifiedGroupKFold(k, shuffle=True, random_state=seed)``'s (train, test) index pairs for labels ``y`` and
    ``groups``, memoised: every SID position of one edit probes the same requests and negatives, hence the same
    folds, and scikit-learn's greedy group assignment takes ≈ 0.6 s on game's 4,000 keys (a quarter of a position's
    torch fits). The arrays are shared between callers: read only."""
    y, groups = np.ascontiguousarray(y), np.ascontiguousarray(groups)
    return _grouped_folds(y.tobytes(), str(y.dtype), groups.tobytes(), str(groups.dtype), k, seed)


@lru_cache(maxsize=8)
def _grouped_folds(y: bytes, y_dtype: str, groups: bytes, groups_dtype: str, k: int,
                   seed: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    labels, grp = np.frombuffer(y, dtype=y_dtype), np.frombuffer(groups, dtype=groups_dtype)
    out = []
    for tr, te in StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(labels, labels, grp):
        tr.setflags(write=False)
        te.setflags(write=False)
        out.append((tr, te))
    return tuple(out)


grouped_folds.cache_clear = _grouped_folds.cache_clear  # type: ignore[attr-defined]  # e.g. to time a fresh edit


def negative_samples(n_train: int, requests, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` training sample indices (sorted, drawn with ``rng``) whose keys stand for "not this batch": the
    layer probe's and the probe gate's negatives. Samples a request's pseudo-history was copied from
    (``requests.sources``, an ``EditRequests``) are left out: their keys are the requests' own."""
    pool = np.setdiff1d(np.arange(n_train), requests.sources[requests.sources >= 0])
    return np.sort(rng.choice(pool, min(len(pool), n), replace=False))


def fixed_layers(n_positions: int, n_layers: int) -> list[int]:
    """The official code's l_p = p, clipped to the decoder depth."""
    return [min(p, n_layers - 1) for p in range(n_positions)]


def locate_layers(policy: LayerPolicy, n_positions: int, n_layers: int, table: ProbeTable | None,
                  seed: int, alpha: float | None = None) -> list[int]:
    """The edit layer l_p of each position under a policy. ``fixed`` is the official code's l_p = p;
    ``probe``/``worst`` need the probe table (``probe`` with ``alpha`` leaves l_p = p only for a layer the probe
    resolves as better at that level, see ``ProbeTable.best_layers``; None: the plain argmax); ``random`` is
    seeded."""
    if policy == "fixed":
        return fixed_layers(n_positions, n_layers)
    if policy == "random":
        return [int(x) for x in np.random.default_rng(seed).integers(0, n_layers, n_positions)]
    if table is None:
        raise ValueError(f"layer policy {policy!r} needs a probe table")
    if policy == "probe":
        return table.best_layers(fixed_layers(n_positions, n_layers), alpha)
    return table.worst_layers()
