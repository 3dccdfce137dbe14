"""In-process service metrics for ``GET /metrics``: request counts by route and status, latency percentiles over
the most recent requests of each route, micro-batch sizes, and the time of every edit (add or rollback)."""
from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque

import numpy as np

LATENCY_WINDOW = 10_000  # most recent requests per route that percentiles are taken over
EDIT_HISTORY = 1_000


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self._counts: dict[str, Counter] = defaultdict(Counter)
        self._latency: dict[str, deque] = defaultdict(lambda: deque(maxlen=LATENCY_WINDOW))
        self._batch_sizes: Counter = Counter()
        self._edits: deque = deque(maxlen=EDIT_HISTORY)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._counts[route][status] += 1
            self._latency[route].append(seconds)

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self._batch_sizes[size] += 1

    def observe_edit(self, kind: str, batch_id: str, seconds: float, n_items: int, ok: bool,
                     timings: dict | None = None) -> None:
        with self._lock:
            self._edits.append({"kind": kind, "batch_id": batch_id, "seconds": round(seconds, 4), "ok": ok,
                                "n_items": n_items, "timings_s": timings or {}, "at": time.time()})

    def to_dict(self) -> dict:
        """JSON-ready: ``requests[route] = {count, by_status, p50_ms, p99_ms, mean_ms}``, ``micro_batches``,
        ``edits`` (newest last)."""
        with self._lock:
            requests = {}
            for route, counts in sorted(self._counts.items()):
                lat = np.asarray(self._latency[route]) * 1e3
                requests[route] = {"count": int(sum(counts.values())),
                                   "by_status": {str(s): n for s, n in sorted(counts.items())},
                                   "p50_ms": round(float(np.percentile(lat, 50)), 3),
                                   "p99_ms": round(float(np.percentile(lat, 99)), 3),
                                   "mean_ms": round(float(lat.mean()), 3), "window": int(lat.size)}
            n_batches = sum(self._batch_sizes.values())
            served = sum(size * n for size, n in self._batch_sizes.items())
            return {"uptime_s": round(time.time() - self.started, 3), "requests": requests,
                    "micro_batches": {"count": n_batches, "requests": served,
                                      "mean_size": round(served / n_batches, 3) if n_batches else 0.0,
                                      "max_size": max(self._batch_sizes, default=0)},
                    "edits": list(self._edits)}
