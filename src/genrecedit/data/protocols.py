"""Evaluation protocols: ``RecDataset`` → ``Split`` (catalog, training sequences, train/valid/test cases).

Every protocol does one thing: it gives each interaction a role (train, valid, test) or drops it, such that along each
user's time-ordered sequence the roles never go back (train … valid … test). A case's history is then simply the
user's preceding kept interactions, the last ``max_history`` of them: for a training sample only train interactions,
for a valid case train + valid, for a test case train + valid + earlier test. No leak by construction, and the
construction checks the monotone order. Vectorised: one sort, then index arithmetic; no per-case Python loop.

Protocols (docs/method.md §1):
- ``time``: global timestamp quantiles t1 = q(valid_quantile), t2 = q(test_quantile) over all interactions
  (``np.quantile``, linear interpolation); train ts < t1 ≤ valid ts < t2 ≤ test ts. With ``filter_test_users`` only
  users with ≥ 1 test interaction are kept, and their train/valid interactions with them.
- ``loo`` (TIGER): per user, last interaction = test, second last = valid, the rest train. Users with fewer than
  3 interactions put everything in train (too short to evaluate; they still teach the model).
- ``holdout`` (catalog launch): the time split, then a seeded sample of ``holdout_fraction`` of its training items
  loses all its train and valid interactions (so it is also absent from every history built from them); test
  interactions are unchanged, and those items become cold.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from genrecedit.data.dataset import PAD_ITEM, CaseSet, RecDataset, Split
from genrecedit.data.summary import format_split_summary, save_split_summary, split_summary
from genrecedit.errors import ConfigError

__all__ = ["SplitConfig", "make_split", "unseen_user_valid", "split_summary", "save_split_summary",
           "format_split_summary"]

Protocol = Literal["time", "loo", "holdout"]
DROPPED, TRAIN, VALID, TEST = -1, 0, 1, 2
LOO_MIN_INTERACTIONS = 3  # a user needs one train, one valid and one test interaction


@dataclass(frozen=True)
class SplitConfig:
    """How to split a dataset into train / valid / test cases."""

    protocol: Protocol = "time"
    valid_quantile: float = 0.8
    test_quantile: float = 0.9
    max_history: int = 20
    holdout_fraction: float = 0.3
    # holdout: also delete the held-out items' validation interactions (docs/method.md §1). False models a launch during
    # the validation period: the items' validation interactions stay, as the "observed" knowledge source
    holdout_drops_valid: bool = True
    seed: int = 0
    filter_test_users: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in get_args(Protocol):
            raise ConfigError(f"protocol must be one of {get_args(Protocol)}, got {self.protocol!r}")
        if not 0.0 < self.valid_quantile <= self.test_quantile < 1.0:
            raise ConfigError(
                f"need 0 < valid_quantile <= test_quantile < 1, got {self.valid_quantile}, {self.test_quantile}"
            )
        if self.max_history < 1:
            raise ConfigError(f"max_history must be >= 1, got {self.max_history}")
        if not 0.0 <= self.holdout_fraction <= 1.0:
            raise ConfigError(f"holdout_fraction must be in [0, 1], got {self.holdout_fraction}")


@dataclass(frozen=True)
class _Interactions:
    """All interactions sorted by (user, timestamp), ties in dataset order.

    user_ids: [n_users] str, sorted; users: [n] int64 index into user_ids; items: [n] int64 catalog index;
    times: [n] float64 seconds.
    """

    user_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    times: np.ndarray


def _encode(ds: RecDataset) -> tuple[list[str], _Interactions]:
    catalog = sorted(str(i) for i in ds.items.index)
    inter = ds.interactions
    user_codes, user_ids = pd.factorize(inter["user_id"].astype(str), sort=True)
    items = pd.Index(catalog).get_indexer(inter["item_id"].astype(str))
    times = inter["timestamp"].to_numpy(dtype=np.float64)
    order = np.lexsort((times, user_codes))  # stable: a no-op on a reader's output, a safe sort otherwise
    return catalog, _Interactions(
        np.asarray(user_ids, dtype=object), user_codes[order].astype(np.int64), items[order].astype(np.int64),
        times[order],
    )


def _positions(users: np.ndarray, n_users: int) -> np.ndarray:
    """[n] 0-based position of each row inside its user's block (users sorted, contiguous)."""
    counts = np.bincount(users, minlength=n_users)
    starts = np.cumsum(counts) - counts
    return np.arange(users.size, dtype=np.int64) - starts[users]


def _histories(items: np.ndarray, pos: np.ndarray, rows: np.ndarray, max_history: int) -> np.ndarray:
    """[len(rows), L] the up to L items preceding each row in its user's block, most recent last, left-padded."""
    back = np.arange(max_history, 0, -1, dtype=np.int64)  # slot k looks back L - k rows
    src = rows[:, None] - back[None, :]
    valid = pos[rows][:, None] >= back[None, :]
    return np.where(valid, items[np.maximum(src, 0)], PAD_ITEM).astype(np.int64)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()


def _time_roles(inter: _Interactions, cfg: SplitConfig, info: dict[str, Any]) -> np.ndarray:
    t1 = float(np.quantile(inter.times, cfg.valid_quantile))
    t2 = float(np.quantile(inter.times, cfg.test_quantile))
    info.update(t1=t1, t2=t2, t1_date=_iso(t1), t2_date=_iso(t2))
    roles = np.full(inter.times.size, TRAIN, dtype=np.int8)
    roles[inter.times >= t1] = VALID
    roles[inter.times >= t2] = TEST
    if cfg.filter_test_users:
        has_test = np.bincount(inter.users[roles == TEST], minlength=inter.user_ids.size) > 0
        roles[~has_test[inter.users]] = DROPPED
    return roles


def _loo_roles(inter: _Interactions) -> np.ndarray:
    counts = np.bincount(inter.users, minlength=inter.user_ids.size)[inter.users]
    pos = _positions(inter.users, inter.user_ids.size)
    roles = np.full(inter.times.size, TRAIN, dtype=np.int8)
    long_enough = counts >= LOO_MIN_INTERACTIONS
    roles[long_enough & (pos == counts - 2)] = VALID
    roles[long_enough & (pos == counts - 1)] = TEST
    return roles


def _hold_out(inter: _Interactions, roles: np.ndarray, cfg: SplitConfig, info: dict[str, Any]) -> np.ndarray:
    """Sorted catalog indices of the held-out items; their train and valid rows become DROPPED in ``roles``."""
    train_items = np.unique(inter.items[roles == TRAIN])
    n_hold = int(round(cfg.holdout_fraction * train_items.size))
    held = np.sort(np.random.default_rng(cfg.seed).choice(train_items, size=n_hold, replace=False))
    dropped_roles = (roles == TRAIN) | (roles == VALID) if cfg.holdout_drops_valid else roles == TRAIN
    drop = np.isin(inter.items, held) & dropped_roles
    roles[drop] = DROPPED
    info.update(n_holdout_items=int(n_hold), n_holdout_interactions_removed=int(drop.sum()))
    return held


def _cold_breakdown(
    inter: _Interactions, n_items: int, warm: np.ndarray, held: np.ndarray | None, t1: float | None
) -> dict[str, int]:
    """Why each cold catalog item is cold; the categories are disjoint and add up to the number of cold items.

    ``held`` (holdout only): the held-out items. ``t1`` (time and holdout): the training cutoff.
    """
    first_seen = np.full(n_items, np.inf)
    np.minimum.at(first_seen, inter.items, inter.times)
    cold = ~warm
    never = cold & np.isinf(first_seen)
    out: dict[str, int] = {}
    if t1 is None:  # loo: a cold item occurs only as some user's valid or test target
        out["only_in_valid_or_test"] = int((cold & ~never).sum())
    else:
        is_held = np.zeros(n_items, dtype=bool)
        if held is not None:
            is_held[held] = True
        new_in_time = cold & ~never & (first_seen >= t1)
        out["new_in_time"] = int(new_in_time.sum())
        out["filtered_out_users_only"] = int((cold & ~never & ~new_in_time & ~is_held).sum())
        if held is not None:
            out["held_out"] = int((cold & is_held).sum())
    out["never_interacted"] = int(never.sum())
    return out


def make_split(ds: RecDataset, cfg: SplitConfig) -> Split:
    """Split ``ds`` by ``cfg.protocol`` (see the module docstring). Deterministic for a given dataset and config.

    Catalog = every item of ``ds.items``, sorted by id (cold items included); users = users with ≥ 1 kept
    interaction, sorted by id. ``split.train`` holds one sample per training interaction (the user's first has an
    empty history); valid/test one case per valid/test interaction. Histories: [n, max_history], left-padded.
    """
    catalog, inter = _encode(ds)
    info: dict[str, Any] = {"config": asdict(cfg), "n_interactions_total": int(inter.times.size),
                            "n_users_total": int(inter.user_ids.size)}
    held: np.ndarray | None = None
    if cfg.protocol == "loo":
        roles = _loo_roles(inter)
    else:
        roles = _time_roles(inter, cfg, info)
        if cfg.protocol == "holdout":
            held = _hold_out(inter, roles, cfg, info)
            info["holdout_items"] = [catalog[i] for i in held]

    keep = roles != DROPPED
    kept_codes, users = np.unique(inter.users[keep], return_inverse=True)
    items, times, roles_kept = inter.items[keep], inter.times[keep], roles[keep]
    users = users.astype(np.int64)
    same_user = users[1:] == users[:-1]
    if np.any(roles_kept[1:][same_user] < roles_kept[:-1][same_user]):
        raise AssertionError("protocol produced a role order that goes back in time")  # a bug, not a user error
    pos = _positions(users, kept_codes.size)

    def cases(role: int) -> CaseSet:
        rows = np.flatnonzero(roles_kept == role)
        return CaseSet(users[rows], _histories(items, pos, rows, cfg.max_history), items[rows], times[rows])

    train, valid, test = cases(TRAIN), cases(VALID), cases(TEST)
    per_user = np.bincount(train.users, minlength=kept_codes.size)
    train_sequences = np.split(train.targets.copy(), np.cumsum(per_user)[:-1]) if kept_codes.size else []
    warm = np.zeros(len(catalog), dtype=bool)
    warm[train.targets] = True
    info["n_interactions_kept"] = int(keep.sum())
    info["cold_items"] = _cold_breakdown(inter, len(catalog), warm, held, info.get("t1"))
    return Split(
        protocol=cfg.protocol, dataset=ds.name, item_ids=catalog, user_ids=inter.user_ids[kept_codes].tolist(),
        train_sequences=train_sequences, train=train, valid=valid, test=test, warm=warm,
        max_history=cfg.max_history, info=info,
    )


def unseen_user_valid(ds: RecDataset, split: Split, cfg: SplitConfig) -> CaseSet:
    """The validation cases of the users ``filter_test_users`` left out of ``split`` (``time``, ``holdout``): each
    interaction of theirs in the validation period, its history their preceding interactions (the same cutoffs; a
    held-out item's dropped interactions stay dropped). None of their interactions is a training sample, and they
    have no test interaction by definition, so no model has learnt them and nothing of the test period is read
    (the users are told apart by ``split.user_ids``, not by test cases). The users with a case are numbered
    from ``len(split.user_ids)`` on, in id order. Empty for ``loo`` or without the filter (then every user is in
    ``split``)."""
    if cfg.protocol == "loo" or not cfg.filter_test_users or "t1" not in split.info:
        return CaseSet.empty(cfg.max_history)
    catalog, inter = _encode(ds)
    if list(catalog) != list(split.item_ids):
        raise ConfigError(f"{ds.name}: the dataset's catalog is not the split's; was the split made from it?")
    t1, t2 = float(split.info["t1"]), float(split.info["t2"])
    outside = ~np.isin(inter.user_ids, np.asarray(split.user_ids, dtype=object))
    keep = outside[inter.users] & (inter.times < t2)
    if cfg.protocol == "holdout":
        held = np.isin(np.asarray(catalog, dtype=object), np.asarray(split.info.get("holdout_items", []), dtype=object))
        dropped = inter.times < (t2 if cfg.holdout_drops_valid else t1)
        keep &= ~(held[inter.items] & dropped)
    if not keep.any():
        return CaseSet.empty(cfg.max_history)
    codes, users = np.unique(inter.users[keep], return_inverse=True)
    items, times = inter.items[keep], inter.times[keep]
    pos = _positions(users.astype(np.int64), codes.size)
    rows = np.flatnonzero(times >= t1)
    numbers = np.unique(users[rows], return_inverse=True)[1].astype(np.int64)  # users with a case, in id order
    return CaseSet(numbers + len(split.user_ids), _histories(items, pos, rows, cfg.max_history),
                   items[rows].astype(np.int64), times[rows])
