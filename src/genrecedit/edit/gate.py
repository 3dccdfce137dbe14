"""The optional probe gate (beyond the paper; docs/method.md §5.12): fire a position's ΔW only on keys that look
like the edit's.

A linear probe at the edit site (l_p, p) separates the batch's request keys from training keys (the same kind of
classifier that located the layer). Its threshold is set on held-out training keys so that the gate fires on at most
``false_positive_rate`` of them: warm traffic is left mostly unedited, which is what keeps warm metrics when the
edit is strong. Without a gate (the default) every key at (l_p, p) gets ΔW k, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from genrecedit.edit.probe import fit_small
from genrecedit.errors import EmptyInputError


@dataclass
class KeyGate:
    """Fires where w·k + b > 0. weight [d_ff] float32, bias [] float32 (threshold folded in)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, keys: torch.Tensor) -> torch.Tensor:
        """[B, d_ff] keys -> [B] bool."""
        return keys @ self.weight.to(keys) + self.bias.to(keys) > 0


def fit_gate(positives: torch.Tensor, negatives: torch.Tensor, false_positive_rate: float, seed: int) -> KeyGate:
    """Logistic regression on standardised keys (request keys [m, d_ff] = 1, training keys [n, d_ff] = 0, classes
    balanced), folded back to raw keys; the threshold is the (1 − rate) quantile of held-out training keys' scores."""
    if len(positives) == 0 or len(negatives) < 10:
        raise EmptyInputError("the probe gate needs request keys and at least 10 training keys")
    if not 0.0 < false_positive_rate < 1.0:
        raise ValueError(f"gate false-positive rate must be in (0, 1), got {false_positive_rate}")
    rng = np.random.default_rng(seed)
    neg = negatives[rng.permutation(len(negatives))].double()
    held, fit_neg = neg[: max(len(neg) // 5, 5)], neg[max(len(neg) // 5, 5):]
    x = torch.cat([positives.double(), fit_neg]).numpy()
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(fit_neg))])
    mean, scale = x.mean(0), x.std(0) + 1e-6
    clf = fit_small(LogisticRegression(max_iter=300, tol=1e-4, class_weight="balanced"), (x - mean) / scale, y)
    w = clf.coef_[0] / scale
    b = float(clf.intercept_[0] - (clf.coef_[0] * mean / scale).sum())
    threshold = float(np.quantile(held.numpy() @ w + b, 1.0 - false_positive_rate))
    return KeyGate(torch.from_numpy(w).float(), torch.tensor(b - max(threshold, 0.0), dtype=torch.float32))
