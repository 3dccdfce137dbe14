"""Merge methods as pure functions over state dicts (``dict[str, Tensor]``, every model on the same keys/shapes).

Each floating tensor is merged in float64 and cast back to its own dtype, one key at a time, so a merge of copies of
one model returns that model to the last bit and a zero-weight task vector leaves the base untouched. Non-floating
tensors (integer buffers) are not merged: they must be equal in every model and are copied.

Task vectors are ``tau_i = theta_i - theta_base``. Weights are used as given; normalising them (so that they sum to
one) is the caller's choice, except in ``linear`` and in TIES' disjoint mean where it is a parameter.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from genrecedit.errors import ArtifactMismatchError, ConfigError

StateDict = dict[str, torch.Tensor]
COMPUTE_DTYPE = torch.float64


def check_compatible(states: Sequence[StateDict], names: Sequence[str] | None = None) -> None:
    """Every state dict has the same keys, and each key the same shape and dtype; else ArtifactMismatchError."""
    if not states:
        raise ArtifactMismatchError("nothing to merge: no state dicts given")
    names = list(names) if names is not None else [f"model {i}" for i in range(len(states))]
    ref, ref_name = states[0], names[0]
    for state, name in zip(states[1:], names[1:]):
        missing, extra = sorted(set(ref) - set(state)), sorted(set(state) - set(ref))
        if missing or extra:
            raise ArtifactMismatchError(f"{name} and {ref_name} have different parameters: {name} lacks "
                                        f"{missing[:3]} and has extra {extra[:3]}")
        for key, tensor in ref.items():
            other = state[key]
            if other.shape != tensor.shape or other.dtype != tensor.dtype:
                raise ArtifactMismatchError(
                    f"{key}: {name} has {tuple(other.shape)} {other.dtype}, {ref_name} has "
                    f"{tuple(tensor.shape)} {tensor.dtype}")


def _check_weights(weights: Sequence[float], n_models: int) -> list[float]:
    weights = [float(w) for w in weights]
    if len(weights) != n_models:
        raise ConfigError(f"{len(weights)} weights for {n_models} models")
    if not all(math.isfinite(w) for w in weights):
        raise ConfigError(f"weights must be finite, got {weights}")
    return weights


def _merge_each(states: Sequence[StateDict], combine: Callable[[str, list[torch.Tensor]], torch.Tensor]) -> StateDict:
    """Apply ``combine(key, [tensor per state, in float64])`` key by key; cast back; copy non-floating tensors."""
    out: StateDict = {}
    for key, ref in states[0].items():
        if not ref.is_floating_point():
            if any(not torch.equal(s[key], ref) for s in states[1:]):
                raise ArtifactMismatchError(f"{key}: non-floating tensor differs between models; cannot merge it")
            out[key] = ref.clone()
            continue
        merged = combine(key, [s[key].detach().to("cpu", COMPUTE_DTYPE) for s in states])
        out[key] = merged.to(ref.dtype)
    return out


def linear(states: Sequence[StateDict], weights: Sequence[float], normalize: bool = True) -> StateDict:
    """Weight averaging: ``sum_i w_i theta_i``, divided by ``sum_i w_i`` when ``normalize``."""
    check_compatible(states)
    weights = _check_weights(weights, len(states))
    total = sum(weights)
    if normalize:
        if total == 0:
            raise ConfigError(f"weights {weights} sum to 0; cannot normalise")
        weights = [w / total for w in weights]
    return _merge_each(states, lambda _, ts: sum(w * t for w, t in zip(weights, ts)))


def task_arithmetic(base: StateDict, states: Sequence[StateDict], weights: Sequence[float]) -> StateDict:
    """``theta_base + sum_i w_i (theta_i - theta_base)``."""
    check_compatible([base, *states])
    weights = _check_weights(weights, len(states))

    def combine(_: str, ts: list[torch.Tensor]) -> torch.Tensor:
        base_t = ts[0]
        return base_t + sum(w * (t - base_t) for w, t in zip(weights, ts[1:]))

    return _merge_each([base, *states], combine)


def trim_top_k(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``ceil(density * numel)`` entries of largest magnitude, zero the rest (TIES' trim step).

    Ties in magnitude at the threshold are broken by position, so exactly that many entries survive.
    """
    n = tau.numel()
    k = min(n, math.ceil(round(density * n, 9)))
    if k >= n:
        return tau.clone()
    flat = tau.reshape(-1)
    keep = torch.zeros(n, dtype=torch.bool)
    if k > 0:
        keep[torch.topk(flat.abs(), k, sorted=False).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(tau.shape)


def ties_combine(taus: Sequence[torch.Tensor], weights: Sequence[float], density: float,
                 normalize: bool = True) -> torch.Tensor:
    """TIES on one tensor: trim each task vector, elect a sign per entry, average the agreeing entries.

    taus: n tensors of one shape -> the merged task vector of that shape. The elected sign is the sign of
    ``sum_i w_i trim(tau_i)`` (the side with more weighted mass); entries whose sign disagrees, or that were trimmed,
    are left out. ``normalize``: divide by the summed weight of the entries kept (disjoint mean), else sum them.
    """
    trimmed = torch.stack([w * trim_top_k(t, density) for w, t in zip(weights, taus)])  # [n, ...]
    elected = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)  # elected == 0 agrees with nothing
    kept = torch.where(agree, trimmed, torch.zeros_like(trimmed)).sum(0)
    if not normalize:
        return kept
    w = torch.tensor(weights, dtype=trimmed.dtype).reshape(-1, *([1] * (trimmed.dim() - 1)))
    mass = (agree * w).sum(0)
    return torch.where(mass != 0, kept / torch.where(mass != 0, mass, torch.ones_like(mass)), torch.zeros_like(kept))


def ties(base: StateDict, states: Sequence[StateDict], weights: Sequence[float], density: float,
         normalize: bool = True) -> StateDict:
    """TIES-merging (Yadav et al. 2023): ``theta_base + ties_combine(tau_i)`` tensor by tensor.

    Weights must be non-negative: a negative weight would flip a task vector's vote in the sign election.
    """
    check_compatible([base, *states])
    weights = _check_weights(weights, len(states))
    if any(w < 0 for w in weights):
        raise ConfigError(f"TIES needs non-negative weights, got {weights}")
    if not 0.0 <= density <= 1.0:
        raise ConfigError(f"density must be in [0, 1], got {density}")

    def combine(_: str, ts: list[torch.Tensor]) -> torch.Tensor:
        return ts[0] + ties_combine([t - ts[0] for t in ts[1:]], weights, density, normalize)

    return _merge_each([base, *states], combine)


def _generator(seed: int, model_index: int) -> torch.Generator:
    # one independent stream per (seed, model): adding a model does not change the others' masks
    state = np.random.SeedSequence([seed, model_index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def dare_drop(tau: torch.Tensor, drop_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry with probability ``drop_rate`` and rescale the survivors by ``1 / (1 - drop_rate)``."""
    if drop_rate == 0.0:
        return tau.clone()
    keep = torch.rand(tau.shape, generator=generator, dtype=torch.float64) >= drop_rate
    return torch.where(keep, tau / (1.0 - drop_rate), torch.zeros_like(tau))


def dare(base: StateDict, states: Sequence[StateDict], weights: Sequence[float], drop_rate: float,
         seed: int = 0) -> StateDict:
    """DARE (Yu et al. 2024): randomly drop-and-rescale each task vector, then combine by task arithmetic.

    Masks come from a generator seeded by (seed, model index), drawn in key order: the same seed gives the same merge.
    """
    check_compatible([base, *states])
    weights = _check_weights(weights, len(states))
    if not 0.0 <= drop_rate < 1.0:
        raise ConfigError(f"drop_rate must be in [0, 1), got {drop_rate}")
    generators = [_generator(seed, i) for i in range(len(states))]

    def combine(_: str, ts: list[torch.Tensor]) -> torch.Tensor:
        base_t = ts[0]
        return base_t + sum(w * dare_drop(t - base_t, drop_rate, g)
                            for w, t, g in zip(weights, ts[1:], generators))

    return _merge_each([base, *states], combine)
