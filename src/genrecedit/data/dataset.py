"""The one in-memory dataset every reader produces, and the case tables every protocol produces."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from genrecedit.errors import DuplicateItemError, EmptyInputError, UnknownItemError

PAD_ITEM = -1  # history slot with no item (histories are left-padded)


def ends_with(histories: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[n] bool: each left-padded history's last item is one of ``items`` (an empty history ends with none)."""
    last = np.asarray(histories)[:, -1]
    return np.isin(last, np.asarray(items)) & (last != PAD_ITEM)


@dataclass(frozen=True)
class RecDataset:
    """Interactions plus item text.

    interactions: columns ``user_id`` (str), ``item_id`` (str), ``timestamp`` (float64, seconds),
        sorted by (user_id, timestamp) with a stable sort, so ties keep file order.
    items: index ``item_id`` (str, unique), column ``text`` (str, non-empty). Every interacted item is here.
    item_fields: the item file's text fields one column each (index ``item_id``, header order, stripped, ``""`` where
        empty) — what ``text`` was joined from, kept for display; None when the reader has no such fields.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    item_fields: pd.DataFrame | None = None

    def validate(self) -> None:
        """Check the invariants readers promise; raise a specific error otherwise."""
        if self.items.index.has_duplicates:
            dup = self.items.index[self.items.index.duplicated()][0]
            raise DuplicateItemError(f"{self.name}: item {dup!r} occurs twice in the item table")
        empty = self.items["text"].str.strip().eq("")
        if empty.any():
            raise EmptyInputError(f"{self.name}: item {self.items.index[empty.to_numpy()][0]!r} has empty text")
        unknown = ~self.interactions["item_id"].isin(self.items.index)
        if unknown.any():
            raise UnknownItemError(
                f"{self.name}: item {self.interactions.loc[unknown, 'item_id'].iloc[0]!r} in interactions "
                "is not in the item table"
            )
        if len(self.interactions) == 0:
            raise EmptyInputError(f"{self.name}: no interactions")


@dataclass(frozen=True)
class CaseSet:
    """Next-item prediction cases over item indices of a ``Split``'s catalog.

    users: [n] int64 user index.
    histories: [n, L] int64 item indices, most recent last, left-padded with ``PAD_ITEM``.
    targets: [n] int64 item index to predict.
    timestamps: [n] float64 time of the target interaction.
    """

    users: np.ndarray
    histories: np.ndarray
    targets: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, mask_or_index: np.ndarray) -> "CaseSet":
        return CaseSet(
            self.users[mask_or_index],
            self.histories[mask_or_index],
            self.targets[mask_or_index],
            self.timestamps[mask_or_index],
        )

    def history_lengths(self) -> np.ndarray:
        """[n] number of real (non-pad) items in each history."""
        return (self.histories != PAD_ITEM).sum(axis=1)

    def concat(self, other: "CaseSet") -> "CaseSet":
        """These cases, then ``other``'s (same history length)."""
        return CaseSet(*(np.concatenate([getattr(self, f), getattr(other, f)])
                         for f in ("users", "histories", "targets", "timestamps")))

    @staticmethod
    def empty(max_history: int) -> "CaseSet":
        return CaseSet(
            np.zeros(0, np.int64), np.full((0, max_history), PAD_ITEM, np.int64), np.zeros(0, np.int64), np.zeros(0)
        )


@dataclass(frozen=True)
class Split:
    """A protocol's output: catalog, per-user training sequences and train/valid/test cases.

    item_ids: catalog item ids; position = item index used everywhere else. Covers every item of the dataset
        (warm and cold), so SIDs of all catalog items are known at inference time.
    train_sequences: per user index, the chronological training-split item indices.
    warm: [n_items] bool, True when the item occurs in the (filtered) training split.
    """

    protocol: str
    dataset: str
    item_ids: list[str]
    user_ids: list[str]
    train_sequences: list[np.ndarray]
    train: CaseSet
    valid: CaseSet
    test: CaseSet
    warm: np.ndarray
    max_history: int
    info: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def item_index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_ids)}

    def cold_items(self) -> np.ndarray:
        """Indices of catalog items absent from the training split: the items GenRecEdit injects."""
        return np.flatnonzero(~self.warm)

    def is_cold(self, cases: CaseSet) -> np.ndarray:
        """[n] bool: the case's target never occurs in the training split."""
        return ~self.warm[cases.targets]
