"""Micro-batching of concurrent ``/recommend`` requests: one beam search for many users.

A single thread takes the first waiting request, then keeps collecting for at most ``window_s`` or until
``max_batch`` requests, and decodes each group of requests that share a snapshot as one batch (a request is always
answered by the snapshot it started with). Beam search results for k are a prefix of those for a larger k at the
same beam width, so one decode with the group's largest k serves every k.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from genrecedit.coldstart.exposure import ExposureCap
from genrecedit.model.recommender import DecodeConfig
from genrecedit.serving.catalog import Snapshot


@dataclass(frozen=True)
class Ranked:
    """One request's answer: items [k'] catalog indices and scores [k'] log-probabilities (empty slots dropped)."""

    items: np.ndarray
    scores: np.ndarray


@dataclass
class _Waiting:
    snapshot: Snapshot
    history: np.ndarray  # [L] item indices, left-padded
    k: int
    future: Future
    exclude: np.ndarray | None = None  # item indices this request may not be served (its user's seen items)


_STOP = object()


class RecommendBatcher:
    """Collects requests from any thread (``submit``) and answers them from one worker thread."""

    def __init__(self, decode: DecodeConfig, window_s: float = 0.002, max_batch: int = 32,
                 on_batch: Callable[[int], None] | None = None, cap: ExposureCap | None = None) -> None:
        self.decode = decode
        self.cap = cap  # the answers are served through it (``Snapshot.rank``), in the order they are decoded
        self.window_s = window_s
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="recommend-batcher", daemon=True)
        self._thread.start()

    def submit(self, snapshot: Snapshot, history: np.ndarray, k: int, exclude: np.ndarray | None = None) -> Future:
        """history [L] item indices of ``snapshot``'s catalog -> a Future of ``Ranked``. ``exclude``: item indices
        the cap must take out of this list before it counts it (the caller still filters them from the answer)."""
        future: Future = Future()
        self._queue.put(_Waiting(snapshot, history, k, future, exclude))
        return future

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _collect(self, first: _Waiting) -> tuple[list[_Waiting], bool]:
        batch, stop = [first], False
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._collect(first)
            if self.on_batch:  # before any answer is out, so that a caller sees its own batch counted
                self.on_batch(len(batch))
            groups: dict[int, list[_Waiting]] = {}
            for w in batch:
                groups.setdefault(id(w.snapshot), []).append(w)
            for group in groups.values():
                self._decode(group)
            if stop:
                return

    def _decode(self, group: list[_Waiting]) -> None:
        """One beam search for requests of one snapshot: histories [n, L] -> each request's top-k."""
        snap = group[0].snapshot
        k = max(w.k for w in group)
        cfg = replace(self.decode, k=k, batch_size=len(group))
        try:
            beams = snap.rank(np.stack([w.history for w in group]), cfg, self.cap, _exclusions(group))
        except Exception as err:  # noqa: BLE001 - handed to every waiting request
            for w in group:
                w.future.set_exception(err)
            return
        items, scores = beams.items.numpy(), beams.scores.numpy()
        for row, w in enumerate(group):
            keep = items[row, : w.k] >= 0
            w.future.set_result(Ranked(items[row, : w.k][keep], scores[row, : w.k][keep]))


def _exclusions(group: list[_Waiting]) -> np.ndarray | None:
    """[n, e] the group's ``exclude`` rows, -1 padded; None when no request excludes anything."""
    rows = [w.exclude if w.exclude is not None else np.zeros(0, np.int64) for w in group]
    width = max(len(r) for r in rows)
    if width == 0:
        return None
    out = np.full((len(group), width), -1, np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out
