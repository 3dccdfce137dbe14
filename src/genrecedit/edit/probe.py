"""Layer location (docs/method.md §5.3, paper §4.2.1): per position, the decoder layer whose FFN keys best separate edit
requests from training samples under a linear probe; plus the ablation policies."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
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

LayerPolicy = Literal["probe", "fixed", "random", "worst"]


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
    """Fit a small sklearn classifier (the layer probe, the probe gate) on one BLAS thread, convergence warnings
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
                   neg_groups: np.ndarray, seed: int, folds: int = 5) -> np.ndarray:
    """[folds] balanced accuracies of a linear probe: keys of requests [m, d_ff] (label 1) vs training keys
    [n, d_ff] (label 0), each fold held out once. Classes are balanced by subsampling the larger; the folds are
    grouped by item (no item on both sides) and stratified by label. The subsample and the folds depend on the
    seed and the sizes only, so every layer of a position is scored on the same folds."""
    rng = np.random.default_rng(seed)
    n = min(len(positives), len(negatives))
    pi = rng.choice(len(positives), n, replace=False)
    ni = rng.choice(len(negatives), n, replace=False)
    x = torch.cat([positives[pi], negatives[ni]]).numpy()
    y = np.concatenate([np.ones(n), np.zeros(n)])
    # offset negative groups so a positive item and a negative item never share a group id by accident
    groups = np.concatenate([pos_groups[pi], neg_groups[ni] + int(pos_groups.max()) + 1])
    n_groups = min(len(np.unique(groups[:n])), len(np.unique(groups[n:])))
    if n_groups < 2:
        return np.full(folds, 0.5)  # too few groups to tell; an uninformative score rather than an error
    k = min(folds, n_groups)
    accs = []
    for train_idx, test_idx in StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y, groups):
        if len(np.unique(y[train_idx])) < 2 or len(np.unique(y[test_idx])) < 2:
            accs.append(0.5)
            continue
        # a not-quite-converged probe still ranks layers
        clf = fit_small(make_pipeline(StandardScaler(), LogisticRegression(max_iter=200, tol=1e-3)),
                        x[train_idx], y[train_idx])
        accs.append(float(balanced_accuracy_score(y[test_idx], clf.predict(x[test_idx]))))
    return np.asarray(accs)


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
