"""Time periods of one split's time line, user roles, and the cases each grid cell trains and is evaluated on.

The grid's split is the ``time`` protocol with ``valid_quantile = test_quantile = q_last`` and no test-user
filter: ``split.train`` holds every interaction before the test period (all periods P0 … P_last), ``split.test``
every one after it. A period is a half-open time interval [start, end); a case belongs to the period of its target's
timestamp. Cold, for cases of a period, means the target was never interacted with (by anyone) before the period
starts: the catalog as it was known at that time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrecedit.data.dataset import CaseSet, Split
from genrecedit.errors import ConfigError

TEST = "T"
TRAIN_USER, VALID_USER, EVAL_USER = 0, 1, 2


@dataclass(frozen=True)
class Periods:
    """names: ["P0", …, "P{n-1}", "T"]; cutoffs: [n] the start times of P1 … T (seconds), increasing."""

    names: list[str]
    cutoffs: np.ndarray

    def of(self, times: np.ndarray) -> np.ndarray:
        """[n] seconds -> [n] period index (0 = P0, len(names) - 1 = T)."""
        return np.searchsorted(self.cutoffs, times, side="right")

    def start(self, k: int) -> float:
        return -np.inf if k == 0 else float(self.cutoffs[k - 1])

    def end(self, k: int) -> float:
        return np.inf if k == len(self.names) - 1 else float(self.cutoffs[k])

    def index(self, name: str) -> int:
        return self.names.index(name)


def make_periods(split: Split, quantiles: list[float]) -> Periods:
    """Cutoffs at the quantiles of all interaction times (``np.quantile``, as the time protocol computes them)."""
    times = np.concatenate([split.train.timestamps, split.valid.timestamps, split.test.timestamps])
    cutoffs = np.asarray([np.quantile(times, q) for q in quantiles], dtype=np.float64)
    if np.any(np.diff(cutoffs) <= 0):
        raise ConfigError(f"period quantiles {quantiles} give cutoffs that are not increasing (ties in timestamps); "
                          f"spread the quantiles")
    names = [f"P{i}" for i in range(len(quantiles))] + [TEST]
    return Periods(names, cutoffs)


def user_roles(n_users: int, valid_fraction: float, eval_fraction: float, seed: int) -> np.ndarray:
    """[n_users] int8: TRAIN_USER, VALID_USER (early stopping) or EVAL_USER (reported metrics), seeded."""
    order = np.random.default_rng(seed).permutation(n_users)
    n_valid, n_eval = int(round(valid_fraction * n_users)), int(round(eval_fraction * n_users))
    roles = np.full(n_users, TRAIN_USER, dtype=np.int8)
    roles[order[:n_valid]] = VALID_USER
    roles[order[n_valid:n_valid + n_eval]] = EVAL_USER
    return roles


def period_cases(split: Split, periods: Periods, roles: np.ndarray, which: list[int], role: int) -> CaseSet:
    """Cases whose target lies in one of the periods ``which`` and whose user has ``role``. The test period's
    cases come from ``split.test`` and are not filtered by role (no cell trains on them)."""
    parts = []
    train_periods = [k for k in which if periods.names[k] != TEST]
    if train_periods:
        cases = split.train
        mask = np.isin(periods.of(cases.timestamps), train_periods) & (roles[cases.users] == role)
        parts.append(cases.subset(mask))
    if any(periods.names[k] == TEST for k in which):
        parts.append(split.test)
    if len(parts) == 1:
        return parts[0]
    return CaseSet(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("users", "histories", "targets", "timestamps")))


def sample(cases: CaseSet, limit: int | None, seed: int) -> CaseSet:
    """A seeded sample of ``limit`` cases (all when fewer), in their original order."""
    if limit is None or len(cases) <= limit:
        return cases
    idx = np.random.default_rng(seed).choice(len(cases), limit, replace=False)
    return cases.subset(np.sort(idx))


def first_seen(split: Split) -> np.ndarray:
    """[n_items] the earliest interaction time of each catalog item (inf: never interacted)."""
    out = np.full(split.n_items, np.inf)
    for cases in (split.train, split.valid, split.test):
        np.minimum.at(out, cases.targets, cases.timestamps)
    return out


def known_items(split: Split, periods: Periods, k: int) -> np.ndarray:
    """[n_items] bool: interacted with before period k starts (the warm catalog of that period's cases)."""
    return first_seen(split) < periods.start(k)
