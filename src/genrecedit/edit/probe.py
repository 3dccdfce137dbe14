"""Layer location (METHOD §5.3, paper §4.2.1): per position, the decoder layer whose FFN keys best separate edit
requests from training samples under a linear probe; plus the ablation policies."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

LayerPolicy = Literal["probe", "fixed", "random", "worst"]


@dataclass
class ProbeTable:
    """accuracy [P, L]: balanced accuracy of the probe at (position, layer) on the held-out 20 %."""

    accuracy: np.ndarray

    def best_layers(self) -> list[int]:
        return [int(np.argmax(row)) for row in self.accuracy]

    def worst_layers(self) -> list[int]:
        return [int(np.argmin(row)) for row in self.accuracy]

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy.round(4).tolist(), "best_layers": self.best_layers()}


def probe_accuracy(positives: torch.Tensor, negatives: torch.Tensor, pos_groups: np.ndarray,
                   neg_groups: np.ndarray, seed: int) -> float:
    """Balanced accuracy of a linear probe: keys of requests [m, d_ff] (label 1) vs training keys [n, d_ff]
    (label 0). Classes are balanced by subsampling the larger; the 80/20 split is grouped by item so that no item
    is on both sides."""
    rng = np.random.default_rng(seed)
    n = min(len(positives), len(negatives))
    pi = rng.choice(len(positives), n, replace=False)
    ni = rng.choice(len(negatives), n, replace=False)
    x = torch.cat([positives[pi], negatives[ni]]).numpy()
    y = np.concatenate([np.ones(n), np.zeros(n)])
    # offset negative groups so a positive item and a negative item never share a group id by accident
    groups = np.concatenate([pos_groups[pi], neg_groups[ni] + int(pos_groups.max()) + 1])
    train_idx, test_idx = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=seed).split(x, y, groups))
    if len(np.unique(y[train_idx])) < 2 or len(np.unique(y[test_idx])) < 2:
        return 0.5  # too few groups to tell; an uninformative score rather than an error
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200, tol=1e-3))
    with warnings.catch_warnings():  # a not-quite-converged probe still ranks layers; accuracy is what we report
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x[train_idx], y[train_idx])
    return float(balanced_accuracy_score(y[test_idx], clf.predict(x[test_idx])))


def locate_layers(policy: LayerPolicy, n_positions: int, n_layers: int, table: ProbeTable | None,
                  seed: int) -> list[int]:
    """The edit layer l_p of each position under a policy. ``fixed`` is the official code's l_p = p (clipped to
    the decoder depth); ``probe``/``worst`` need the probe table; ``random`` is seeded."""
    if policy == "fixed":
        return [min(p, n_layers - 1) for p in range(n_positions)]
    if policy == "random":
        return [int(x) for x in np.random.default_rng(seed).integers(0, n_layers, n_positions)]
    if table is None:
        raise ValueError(f"layer policy {policy!r} needs a probe table")
    return table.best_layers() if policy == "probe" else table.worst_layers()
