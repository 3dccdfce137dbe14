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

from genrecedit.edit.logistic import fit_logistic
from genrecedit.errors import EmptyInputError


@dataclass
class KeyGate:
    """Fires where w·k + b > 0. weight [d_ff] float32, bias [] float32 (threshold folded in)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, keys: torch.Tensor) -> torch.Tensor:
        """[B, d_ff] keys -> [B] bool."""
        return keys @ self.weight.to(keys) + self.bias.to(keys) > 0


def fit_gate(positives: torch.Tensor, negatives: torch.Tensor, false_positive_rate: float, seed: int,
             device: torch.device | str | None = None) -> KeyGate:
    """Logistic regression on standardised keys (request keys [m, d_ff] = 1, training keys [n, d_ff] = 0, classes
    balanced; scikit-learn's objective at C = 1, lbfgs tol 1e-4, ≤ 300 iterations, fitted in float64 with
    ``logistic.fit_logistic`` on ``device``, default the keys'), folded back to raw keys; the threshold is the
    (1 − rate) quantile of held-out training keys' scores. The gate itself lives on the CPU."""
    if len(positives) == 0 or len(negatives) < 10:
        raise EmptyInputError("the probe gate needs request keys and at least 10 training keys")
    if not 0.0 < false_positive_rate < 1.0:
        raise ValueError(f"gate false-positive rate must be in (0, 1), got {false_positive_rate}")
    device = positives.device if device is None else device
    rng = np.random.default_rng(seed)
    neg = negatives[torch.from_numpy(rng.permutation(len(negatives)))].to(device, torch.float64)
    held, fit_neg = neg[: max(len(neg) // 5, 5)], neg[max(len(neg) // 5, 5):]
    x = torch.cat([positives.to(device, torch.float64), fit_neg])
    y = torch.cat([torch.ones(len(positives)), torch.zeros(len(fit_neg))]).to(device)
    fit = fit_logistic(x[None], y, torch.ones(1, len(x), dtype=torch.bool, device=device), C=1.0, tol=1e-4,
                       max_iter=300, class_weight="balanced")
    w, b = fit.coef[0, 0], fit.intercept[0, 0]
    threshold = float(torch.quantile(held @ w + b, 1.0 - false_positive_rate))
    return KeyGate(w.float().cpu(), (b - max(threshold, 0.0)).float().cpu())
