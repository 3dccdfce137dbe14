"""How much task vectors disagree: sign conflicts and cosine similarity, measured before merging.

A parameter entry is *in conflict* when at least two task vectors are non-zero there and their signs differ
(TIES' notion of interference). Measured over all floating parameters, with and without TIES' trim (keep the
``density`` largest-magnitude entries of each task vector, tensor by tensor), so the share reflects what a TIES merge
with that density actually has to resolve.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from genrecedit.merging.methods import COMPUTE_DTYPE, StateDict, check_compatible, trim_top_k


def conflict_stats(base: StateDict, states: Sequence[StateDict], density: float = 1.0) -> dict:
    """-> {"conflict_share": entries in conflict / entries where ≥ 2 task vectors are non-zero,
    "conflict_share_all": entries in conflict / all entries, "cosine": mean pairwise cosine of the task vectors,
    "norms": [||tau_i||], "density": density}."""
    check_compatible([base, *states])
    n = len(states)
    conflict = overlap = total = 0
    dots = torch.zeros(n, n, dtype=COMPUTE_DTYPE)
    for key, ref in base.items():
        if not ref.is_floating_point():
            continue
        b = ref.detach().to("cpu", COMPUTE_DTYPE)
        taus = torch.stack([s[key].detach().to("cpu", COMPUTE_DTYPE) - b for s in states]).reshape(n, -1)
        dots += taus @ taus.T
        if density < 1.0:
            taus = torch.stack([trim_top_k(t, density) for t in taus])
        signs = torch.sign(taus)
        nonzero = (signs != 0).sum(0)
        positive, negative = (signs > 0).any(0), (signs < 0).any(0)
        conflict += int((positive & negative).sum())
        overlap += int((nonzero >= 2).sum())
        total += taus.shape[1]
    norms = dots.diagonal().sqrt()
    cos = [float(dots[i, j] / (norms[i] * norms[j])) for i in range(n) for j in range(i + 1, n)
           if norms[i] > 0 and norms[j] > 0]
    return {"conflict_share": conflict / overlap if overlap else None, "conflict_share_all": conflict / total,
            "cosine": sum(cos) / len(cos) if cos else None, "norms": [float(x) for x in norms], "density": density}
