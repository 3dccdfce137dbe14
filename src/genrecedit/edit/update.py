"""Parameter update (docs/method.md §5.5, paper Eq. 13): ΔW = R K1ᵀ (λ C0 + K_prev K_prevᵀ + K1 K1ᵀ)⁻¹."""
from __future__ import annotations

import torch


def closed_form_update(keys: torch.Tensor, residuals: torch.Tensor, c0: torch.Tensor, lam: float,
                       prev_cov: torch.Tensor | None = None, key_cov: torch.Tensor | None = None) -> torch.Tensor:
    """keys [m, d_ff] (rows k_i, i.e. K1ᵀ), residuals [m, d_model] (rows r_i = z'_i − W k_i), c0 [d_ff, d_ff] ->
    ΔW [d_model, d_ff] in float64.

    Solved as X A = R K1ᵀ with ``torch.linalg.solve(..., left=False)``, never an explicit inverse. prev_cov is
    Σ K_prev K_prevᵀ of earlier edit batches at this site (sequential editing, docs/method.md §5.8); key_cov, when the
    caller already has it, is this batch's K1 K1ᵀ (float64), so it is not computed twice.
    """
    if lam <= 0:
        raise ValueError(f"λ must be positive, got {lam}")
    k = keys.to(torch.float64)
    r = residuals.to(torch.float64)
    a = lam * c0.to(torch.float64) + (k.T @ k if key_cov is None else key_cov.to(torch.float64))
    if prev_cov is not None:
        a = a + prev_cov.to(torch.float64)
    return torch.linalg.solve(a, r.T @ k, left=False)
