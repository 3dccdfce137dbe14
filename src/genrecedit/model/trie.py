"""Prefix trie over the catalog's SIDs, as dense per-level transition tables (fast, vectorised lookups)."""
from __future__ import annotations

import numpy as np
import torch

from genrecedit.errors import DuplicateItemError, EmptyInputError


class PrefixTrie:
    """All catalog SIDs [n_items, P]; node ids per level, children tables and the item at each leaf.

    Level p has ``n_nodes[p]`` nodes (prefixes of length p; level 0 is the root). ``child[p]`` is a
    [n_nodes[p], sizes[p]] int64 table: the level-(p+1) node reached by code c, or -1. Leaves (level P) are items:
    ``leaf_item[node]`` is the item index. Rebuilding for a grown catalog takes milliseconds, so the trie is
    immutable and a new one is built when items are added.
    """

    def __init__(self, codes: np.ndarray, sizes: tuple[int, ...]) -> None:
        if codes.ndim != 2 or codes.shape[0] == 0:
            raise EmptyInputError("a trie needs a non-empty [n_items, P] code table")
        n, n_pos = codes.shape
        self.sizes = tuple(int(s) for s in sizes)
        self.n_positions = n_pos
        self.child: list[torch.Tensor] = []
        node = np.zeros(n, np.int64)  # every item starts at the root
        self._item_nodes: list[np.ndarray] = []  # per level 1..P: each item's node (its prefix of that length)
        for p in range(n_pos):
            pairs = node * self.sizes[p] + codes[:, p]
            uniq, next_node = np.unique(pairs, return_inverse=True)
            table = np.full((int(node.max()) + 1, self.sizes[p]), -1, np.int64)
            table.reshape(-1)[uniq] = np.arange(len(uniq))
            self.child.append(torch.from_numpy(table))
            node = next_node.reshape(-1)
            self._item_nodes.append(node)
        if len(np.unique(node)) != n:
            dup = n - len(np.unique(node))
            raise DuplicateItemError(f"{dup} catalog items share a full SID; SIDs must be unique")
        leaf_item = np.full(n, -1, np.int64)
        leaf_item[node] = np.arange(n)
        self.leaf_item = torch.from_numpy(leaf_item)
        self.item_leaf = torch.from_numpy(node)

    @property
    def n_items(self) -> int:
        return int(self.leaf_item.shape[0])

    def item_nodes(self, level: int) -> np.ndarray:
        """[n_items] int64: each item's node at ``level`` (1..P), i.e. the node of its first ``level`` codes."""
        if not 1 <= level <= self.n_positions:
            raise ValueError(f"trie level {level} must be in 1..{self.n_positions}")
        return self._item_nodes[level - 1]

    def subtree_flags(self, items: np.ndarray) -> list[torch.Tensor]:
        """Item indices -> per level p = 1..P a bool [n_nodes at level p] tensor (on the trie's device): whether the
        node's subtree holds one of ``items``. Entry p - 1 is for level p (the node reached by p codes)."""
        out = []
        for nodes in self._item_nodes:
            flags = np.zeros(int(nodes.max()) + 1, bool)
            flags[nodes[items]] = True
            out.append(torch.from_numpy(flags).to(self.leaf_item.device))
        return out

    def to(self, device: torch.device | str) -> "PrefixTrie":
        self.child = [c.to(device) for c in self.child]
        self.leaf_item = self.leaf_item.to(device)
        self.item_leaf = self.item_leaf.to(device)
        return self

    def walk(self, sids: np.ndarray) -> np.ndarray:
        """[m, P] codes -> [m] item index, -1 where the SID is not in the catalog."""
        node = np.zeros(len(sids), np.int64)
        for p in range(self.n_positions):
            ok = node >= 0
            nxt = np.full(len(sids), -1, np.int64)
            nxt[ok] = self.child[p].cpu().numpy()[node[ok], sids[ok, p]]
            node = nxt
        out = np.full(len(sids), -1, np.int64)
        ok = node >= 0
        out[ok] = self.leaf_item.cpu().numpy()[node[ok]]
        return out
