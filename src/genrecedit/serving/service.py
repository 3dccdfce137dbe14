"""``LiveService``: a trained run that recommends, takes new items and applies GenRecEdit to them while serving.

Consistency model:
- Requests read ``self.snapshot`` once (one reference read) and are answered wholly from it.
- Every change (add a batch, roll one back) runs on one edit worker thread, in arrival order, off the request path.
  The worker validates against the newest snapshot, computes the next one, writes the artifact and commits the
  registry, and only then swaps the snapshot reference. A failure at any step leaves the old snapshot serving.
- The model's weights are never changed (edits are ΔW applied by the decoding schedule) and are frozen
  (``requires_grad`` off) so that δ optimisation on the worker computes no weight gradients.

Adding items: ids must be new to the catalog (the run's items count); the text is embedded with the run's encoder,
SIDs come from the frozen tokenizer, pseudo-histories from the most similar warm items, and the edit is solved
against the current stack (docs/method.md §5.8). Nothing is written for a batch that fails validation (a duplicate
id, an empty text, an item without pseudo-histories); a batch whose edit fails is recorded as ``failed``.

Feedback (``add_feedback``): interactions with added items (a user's history followed by the item) re-edit those
items from them, replacing their text-only edits with exact replacement semantics (``ColdItemEditor.replace_items``,
docs/method.md §5.8): the stack is what editing from scratch would give with the items' earlier rows taken out of the
batches that taught them, and a feedback batch that teaches them on top. Feedback accumulates: an item's re-edit
uses every interaction the service holds for it (those of its latest active feedback batch plus the new ones). A
feedback batch adds no catalog item; it is a batch of the stack like any other (listed, restored, rolled back).

Rolling back: the newest item batch is removed exactly (the stack minus its ΔW, outputs bit-identical to before it
was added). Otherwise the batches from the lowest one whose requests change are solved again, in order, on the
remaining stack, from what the registry holds (an item batch's pseudo-histories: a pure function of the catalog; a
feedback batch's interactions, by item id, so they follow the catalog's new indices): an older item batch (the later
batches' SIDs replayed, their ΔW change), or a feedback batch (the items it re-edited get their earlier rows back:
their text edit, or the feedback before it). An item batch whose items an active feedback batch re-edits or holds in
its histories is refused (409) until that feedback batch is rolled back.

Asynchronous adds (``submit_add``): the batch is validated at once (a 4xx writes nothing), recorded as a job in the
registry under its idempotency key, and run on the edit worker; the job records its state, timings and the add's
answer (or its error), so that a restarted service still answers for finished jobs. ``add_items`` is the blocking
form of the same add (no job).

Versions: ``model_version`` is kept in the registry and raised in the transaction of every add and rollback, so it
never goes back, across restarts too.

Reach: after each add the new snapshot decodes a seeded sample of the run's validation histories through the same
function as ``recommend`` (``_ranked``, on a batcher of its own so that live requests neither wait behind it nor
count it in their metrics), and the add answers each item's exposure (the share of those top-10 lists holding it)
with a warning for an item that reaches no one or more than ``max_item_share`` of them (``serving.exposure``). The
lists served pass one exposure cap per process (``ServiceConfig.exposure_cap``): whatever placed a new item in a list
(the insertion, an edit, the content prior), it enters at most that share of the lists served since it was first a
candidate; the estimate reads uncapped lists.

Replicas: a service opened with a ``leader`` is a follower. It never edits: adds and rollbacks go to the leader (the
one process that applies edits, in-process or over a Ray Serve handle, ``serving.replicas``), and a thread polls the
shared registry every ``sync_interval_s`` and, when ``model_version`` moved, rebuilds its snapshot from the registry
and the artifact store exactly as a restart would. A load that races a commit (the version moved while it read, or
the artifact it read was replaced) is dropped and tried again on the next poll. After a change it forwarded, a
follower answers only once it serves the change's version itself (read-your-writes on that replica).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from genrecedit.coldstart.exposure import ExposureCap
from genrecedit.edit.artifact import EditArtifact, EditBatch, TriggerMode
from genrecedit.edit.editor import EditReport
from genrecedit.edit.knowledge import EditRequests
from genrecedit.errors import (ArtifactMismatchError, ConfigError, DuplicateItemError, EmptyInputError,
                               UnknownItemError)
from genrecedit.model.recommender import DecodeConfig
from genrecedit.runs.backbone import LoadedRun, load_run
from genrecedit.runs.coldstart import adopted_insertion
from genrecedit.runs.edit import make_editor
from genrecedit.serving.batcher import Ranked, RecommendBatcher
from genrecedit.serving.catalog import (Catalog, Snapshot, build_snapshot, delta_fingerprint, knowledge_for,
                                        text_requests, with_batch_id)
from genrecedit.serving.errors import (BatchInUseError, BatchNotActiveError, EditFailedError, InvalidRequestError,
                                       PayloadTooLargeError, UnknownBatchError)
from genrecedit.serving.exposure import EXPOSURE_K, added_item_exposure, validation_histories
from genrecedit.serving.jobs import AddJobs
from genrecedit.serving.metadata import ItemMetadata
from genrecedit.serving.metrics import Metrics
from genrecedit.serving.registry import BatchFeedback, BatchItems, Registry
from genrecedit.text.embed import embed_items, make_encoder

log = logging.getLogger(__name__)

ARTIFACTS = "artifacts"
DEFAULT_STATE = "service"
START_PROBE_ITEMS = 200  # the run's new items whose text-only requests locate the layer map at start
MAX_ID_CHARS = 200
# letters, digits and _:@+~=- in runs, joined by single dots: no '/', '..', spaces or control characters
ITEM_ID_PATTERN = r"^[A-Za-z0-9_:@+~=-]+(?:\.[A-Za-z0-9_:@+~=-]+)*$"


@dataclass
class ServiceConfig:
    """Limits and knobs of the service (the model, decoding and edit settings come from the run's config)."""

    state_dir: Path | None = None  # default: <run dir>/service
    max_items_per_batch: int = 256
    max_interactions_per_batch: int = 5_000  # per feedback request
    max_text_chars: int = 2_000
    max_history_items: int = 1_000  # per request; the model reads the last split.max_history of them
    batch_window_ms: float = 2.0
    max_micro_batch: int = 32
    trigger: TriggerMode | None = None  # how edits fire when decoding; None: the run's eval.trigger (its recipe)
    exposure_cases: int = 500  # validation histories decoded after each add to estimate reach; 0: no estimate
    max_item_share: float = 0.05  # an added item in more of those top-10 lists than this is flagged overexposed
    # the share of the top-10 lists this process serves that any one new item may enter, whatever placed it there
    # (an edit, the content prior or the insertion): ``coldstart.exposure.ExposureCap``. None: the adopted
    # insertion's own cap (``insertion.cap``, the bound its selection held) where there is one, else
    # ``max_item_share``. 0: uncapped.
    exposure_cap: float | None = None
    # whether an added item's text edit fires when decoding. None: not where the run serves an adopted calibrated
    # insertion (the text-only recipe its validation chose reads no edit; the insertion serves the item, and the
    # edit stays stored for feedback to replace), else yes. Feedback edits always fire.
    text_edits: bool | None = None
    api_key_file: Path | None = field(default=None, repr=False)  # None: $GENRECEDIT_API_KEY (serving.access)
    insecure_no_auth: bool = False  # no key configured: mutating endpoints open (local development only)
    max_body_bytes: int = 8 * 1024 * 1024  # per HTTP request, chunked bodies included
    registry_url: str | None = field(default=None, repr=False)  # PostgreSQL registry; None: SQLite in state_dir
    sync_interval_s: float = 0.1  # a follower's poll of the registry for a new model_version
    follow_timeout_s: float = 30.0  # how long a follower waits to serve a change it forwarded before it says so
    warm_c0: bool = True  # the leader computes the edit's C0 on its edit worker at start: the first add finds it cached
    # with an empty stack and a probed layer policy, the leader also locates the layer map at start, on text-only
    # requests of a seeded sample of the run's own new items (the first add then skips the probe)
    probe_at_start: bool = True

    def resolved(self, run_dir: Path) -> "ServiceConfig":
        """Relative paths (``state_dir``, ``api_key_file``) taken against the run directory, not the CWD."""
        def at(path: Path | None) -> Path | None:
            return None if path is None else Path(run_dir) / Path(path) if not Path(path).is_absolute() else Path(path)
        return replace(self, state_dir=at(self.state_dir) or Path(run_dir) / DEFAULT_STATE,
                       api_key_file=at(self.api_key_file))


@dataclass(frozen=True)
class NewItem:
    item_id: str
    text: str


@dataclass(frozen=True)
class Interaction:
    """Feedback on an added item: a user whose history (item ids, oldest first, not empty) went on to ``item_id``."""

    item_id: str
    history: tuple[str, ...]


class Leader(Protocol):
    """Where a follower sends what changes the model: the leader's ``LiveService`` itself, or a handle to it."""

    def submit_add(self, items: list[NewItem], idempotency_key: str | None = None) -> tuple[dict, bool]: ...

    def wait_job(self, job_id: str, timeout: float | None = None) -> dict: ...

    def add_items(self, items: list[NewItem]) -> dict: ...

    def add_feedback(self, interactions: list[Interaction]) -> dict: ...

    def roll_back(self, batch_id: str) -> dict: ...


class StaleLoadError(Exception):
    """The registry moved while a follower read it: the load is dropped and tried again."""


class LiveService:
    def __init__(self, run: LoadedRun, cfg: ServiceConfig | None = None, leader: Leader | None = None,
                 name: str | None = None) -> None:
        self.leader = leader  # None: this process applies edits; else a follower of that leader
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.run = _caches_in_run_dir(run)
        run = self.run
        self.cfg = (cfg or ServiceConfig()).resolved(run.run_dir)
        self.state_dir = Path(self.cfg.state_dir)
        self.decode = run.config.decode
        self.max_history = run.config.split.max_history
        self.trigger: TriggerMode = self.cfg.trigger or run.config.eval.trigger
        if self.cfg.exposure_cases < 0 or not 0 <= self.cfg.max_item_share <= 1:
            raise ConfigError(f"exposure_cases ({self.cfg.exposure_cases}) must be ≥ 0 and max_item_share "
                              f"({self.cfg.max_item_share}) in [0, 1]")
        if self.cfg.exposure_cap is not None and not 0 <= self.cfg.exposure_cap <= 1:
            raise ConfigError(f"exposure_cap must be in [0, 1] (0: uncapped) or None, got {self.cfg.exposure_cap}")
        if not self.cfg.sync_interval_s > 0 or not self.cfg.follow_timeout_s > 0:
            raise ConfigError(f"sync_interval_s ({self.cfg.sync_interval_s}) and follow_timeout_s "
                              f"({self.cfg.follow_timeout_s}) must be > 0")
        # drawn once: the split never changes while serving (validation cases only, never test)
        self.exposure_histories = validation_histories(run.prepared.split, self.cfg.exposure_cases,
                                                       run.config.eval.seed, self.max_history)
        run.recommender.model.requires_grad_(False)
        follower = leader is not None  # a follower neither edits nor embeds: it loads what the leader wrote
        self.editor = None if follower else make_editor(run, self.trigger)
        self.encoder = None if follower else make_encoder(run.config.embedding.encoder, run.config.device,
                                                          run.config.embedding.batch_size)
        self.embedding_cache = Path(run.config.cache_dir) / "embeddings"
        self.base_catalog = Catalog.base(run.prepared)
        self.metadata = ItemMetadata(run.prepared.dataset)
        self.metrics = Metrics()
        self.registry = Registry(self.state_dir, self.cfg.registry_url)
        self.registry.bind_base(run.base_hash)
        # only the leader closes what a previous leader left unfinished (a follower would fail a running add)
        self.interrupted = [] if follower else self.registry.fail_interrupted()
        self.interrupted_jobs = [] if follower else self.registry.fail_interrupted_jobs()
        self._texts: tuple[int, dict[str, str]] = (-1, {})  # (snapshot version, added item id -> text)
        self.insertion = adopted_insertion(run)  # the adopted calibrated insertion, if the run's config names one
        self.text_edits = self.insertion is None if self.cfg.text_edits is None else self.cfg.text_edits
        self._verified: dict[int, tuple[EditBatch, str]] = {}  # id(batch) -> (batch, its ΔW digest), checked
        self.snapshot: Snapshot = self._restore()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edit-worker")
        self._queued = 0  # changes submitted to the worker and not finished yet
        self._queued_lock = threading.Lock()
        self.jobs = AddJobs(self.registry, self._queue)
        self._closed = False
        decode = DecodeConfig(self.decode.beam, self.decode.k, self.decode.batch_size, self.decode.constrained)
        self.cap = self._exposure_cap()  # over every list this process serves (None: uncapped)
        self.batcher = RecommendBatcher(decode, self.cfg.batch_window_ms / 1e3, self.cfg.max_micro_batch,
                                        self.metrics.observe_batch, self.cap)
        # the exposure estimate's: the same decoding, off the live queue and out of the request metrics
        self.exposure_batcher = RecommendBatcher(decode, self.cfg.batch_window_ms / 1e3, self.cfg.max_micro_batch)
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._follower = None
        if follower:
            self._follower = threading.Thread(target=self._follow, name="registry-follower", daemon=True)
            self._follower.start()
        # queued first: an add submitted meanwhile waits for it, and then finds C0 cached
        self._start_stack: EditArtifact | None = None  # the empty stack with the layer map located at start
        self.warm_up: Future | None = (self._queue(self._warm_c0) if self.editor is not None and self.cfg.warm_c0
                                       else None)

    def _exposure_cap(self) -> ExposureCap | None:
        """``ServiceConfig.exposure_cap``: a fresh cap at that share; by default the adopted insertion's (its
        selection's bound) or ``max_item_share``. A run without an adopted insertion serves its edits and the content
        prior through it too: an added item's text edit can carry it into most lists (docs/service.md)."""
        share = self.cfg.exposure_cap
        if share is None:
            if self.insertion is not None and self.insertion.cfg.cap is not None:
                share = self.insertion.cfg.cap
            else:
                share = self.cfg.max_item_share
        return ExposureCap(share) if share > 0 else None

    @classmethod
    def open(cls, run_dir: Path, cfg: ServiceConfig | None = None, overrides: list[str] | None = None,
             leader: Leader | None = None, name: str | None = None) -> "LiveService":
        return cls(load_run(run_dir, overrides), cfg, leader, name)

    def close(self) -> None:
        """Finish the queued changes, stop the threads, close the registry (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._follower is not None:
            self._follower.join()
        if self.warm_up is not None:
            self.warm_up.cancel()  # not started yet: skipped (a running C0 finishes, it is cached for next time)
        self._worker.shutdown(wait=True)
        self.batcher.close()
        self.exposure_batcher.close()
        self.registry.close()

    # -- requests (any thread) -------------------------------------------------------------------------------
    def recommend(self, history: list[str], k: int | None = None, exclude_seen: bool = False) -> dict:
        """Top-k (default ``decode.k``, at most ``decode.beam``) items for one user's history of item ids, oldest
        first, each with its score and metadata (title, text, fields). An empty history is valid (the model answers
        a lone EOS input: popularity-like output). ``exclude_seen``: items of the history are dropped and the list
        filled from the rest of the beam (fewer than k when more than beam − k of the beam were seen)."""
        k = self.decode.k if k is None else k
        if not 1 <= k <= self.decode.beam:
            raise InvalidRequestError(f"k={k} must be between 1 and the beam width {self.decode.beam}")
        if len(history) > self.cfg.max_history_items:
            raise PayloadTooLargeError(f"history of {len(history)} items; at most {self.cfg.max_history_items} "
                                       f"(the model reads the last {self.max_history})")
        snap = self.snapshot
        hist = snap.catalog.histories([history], self.max_history)
        seen = {snap.catalog.index[item] for item in history} if exclude_seen else set()
        exclude = [np.fromiter(seen, np.int64, len(seen))] if seen else None  # out before the cap counts the list
        ranked = self._ranked(snap, hist, self.decode.beam if exclude_seen else k, exclude=exclude)[0]
        pairs = list(zip(ranked.items.tolist(), ranked.scores.tolist()))
        if exclude_seen:
            pairs = [(i, s) for i, s in pairs if i not in seen][:k]
        return {"items": [{"item_id": snap.catalog.item_ids[i], "score": float(s),
                           **self._metadata(snap, snap.catalog.item_ids[i])} for i, s in pairs],
                "model_version": snap.version,
                "active_batches": len(snap.artifact.batches) if snap.artifact is not None else 0}

    def _metadata(self, snap: Snapshot, item_id: str) -> dict:
        """``{"title", "text", "fields"}`` of a catalog item of ``snap``."""
        base = self.metadata.base(item_id)
        if base is not None and snap.catalog.index[item_id] < snap.catalog.n_base:
            return {**base, "fields": dict(base["fields"])}
        version, texts = self._texts
        if version != snap.version:
            texts = {i: t for b in snap.catalog.batches for i, t in zip(b.item_ids, b.texts)}
            self._texts = (snap.version, texts)
        return ItemMetadata.added(texts[item_id])

    def _ranked(self, snap: Snapshot, histories: np.ndarray, k: int, batcher: RecommendBatcher | None = None,
                exclude: list[np.ndarray] | None = None) -> list[Ranked]:
        """Top-k of ``snap`` for histories [n, L] (catalog indices, left-padded), micro-batched: the one decoding
        path of ``recommend`` and of the exposure estimate (default batcher: the live one). ``exclude``: per
        history, the items its list may not hold (``RecommendBatcher.submit``)."""
        batcher = batcher or self.batcher
        futures = [batcher.submit(snap, h, k, None if exclude is None else exclude[i])
                   for i, h in enumerate(histories)]
        return [f.result() for f in futures]

    def _exposure(self, snap: Snapshot, new: np.ndarray) -> dict:
        """``serving.exposure.added_item_exposure`` of the items ``new`` on the validation sample, with ``snap``."""
        return added_item_exposure(lambda s, h, k: self._ranked(s, h, k, self.exposure_batcher), snap, new,
                                   [snap.catalog.item_ids[i] for i in new], self.exposure_histories,
                                   min(EXPOSURE_K, self.decode.beam), self.cfg.max_item_share,
                                   None if self.cap is None else self.cap.share)

    def item(self, item_id: str) -> dict | None:
        snap = self.snapshot
        if item_id not in snap.catalog.index:
            return None
        pos = snap.catalog.index[item_id]
        return {"item_id": item_id, "index": pos, "sid": snap.catalog.codes[pos].tolist(),
                **self._metadata(snap, item_id), "warm": bool(snap.catalog.warm[pos]),
                "batch_id": snap.catalog.origin(item_id)}

    def health(self) -> dict:
        snap = self.snapshot
        return {"status": "ok", "model_version": snap.version, "replica": self.name,
                "role": "leader" if self.leader is None else "follower", "catalog_size": len(snap.catalog),
                "base_items": snap.catalog.n_base, "added_items": len(snap.catalog) - snap.catalog.n_base,
                "active_batches": snap.active_batches, "base_hash": self.run.base_hash,
                "edit_queue": self._queued, "interrupted_at_start": self.interrupted,
                "jobs_interrupted_at_start": self.interrupted_jobs,
                "exposure_cap": None if self.cap is None else self.cap.state()}

    def add_items(self, items: list[NewItem]) -> dict:
        """Validate at the boundary, then run the edit on the worker; blocks until the batch is serving."""
        self._validate(items)
        if self.leader is not None:
            return self._served(self.leader.add_items(list(items)))
        return self._on_worker(self._add, list(items))

    def submit_add(self, items: list[NewItem], idempotency_key: str | None = None) -> tuple[dict, bool]:
        """Record an add as a job and queue it on the edit worker; returns (the job, whether it was created now).
        A retry under the same key returns the same job; the batch is validated first, against the catalog too
        (``serving.jobs.AddJobs.create``)."""
        items = list(items)
        if self.leader is not None:
            self._validate(items)
            return self.leader.submit_add(items, idempotency_key)
        return self.jobs.create(idempotency_key, [[it.item_id, it.text] for it in items],
                                [it.item_id for it in items], lambda: self._validate_new(items),
                                lambda job_id: self._add(items, job_id))

    def job(self, job_id: str) -> dict:
        return self.jobs.get(job_id)

    def wait_job(self, job_id: str, timeout: float | None = None) -> dict:
        if self.leader is None:
            return self.jobs.wait(job_id, timeout)
        job = self.leader.wait_job(job_id, timeout)
        if job["state"] == "succeeded":
            self._served(job["result"])
        return job

    def _validate_new(self, items: list[NewItem]) -> None:
        """``_validate`` and no id already in the catalog (the worker checks again against the newest one)."""
        self._validate(items)
        snap = self.snapshot
        taken = [it.item_id for it in items if it.item_id in snap.catalog.index]
        if taken:
            raise DuplicateItemError(f"item {taken[0]!r} is already in the catalog")

    def _validate(self, items: list[NewItem]) -> None:
        """The checks that need no model: count, ids (``ITEM_ID_PATTERN``), texts, repeats."""
        if not items:
            raise EmptyInputError("no items given; send at least one {item_id, text}")
        if len(items) > self.cfg.max_items_per_batch:
            raise PayloadTooLargeError(f"{len(items)} items in one batch; at most {self.cfg.max_items_per_batch}")
        seen: set[str] = set()
        for it in items:
            if not it.item_id.strip():
                raise EmptyInputError("an item id is empty")
            if len(it.item_id) > MAX_ID_CHARS or not re.fullmatch(ITEM_ID_PATTERN, it.item_id):
                raise InvalidRequestError(f"item id {it.item_id[:MAX_ID_CHARS]!r}: ids are 1-{MAX_ID_CHARS} "
                                          f"characters matching {ITEM_ID_PATTERN} (letters, digits and _:@+~=-, "
                                          "dots only between them; no '/', '..', spaces or control characters)")
            if not it.text.strip():
                raise EmptyInputError(f"item {it.item_id!r} has an empty text")
            if len(it.text) > self.cfg.max_text_chars:
                raise PayloadTooLargeError(f"item {it.item_id!r}: text of {len(it.text)} characters; at most "
                                           f"{self.cfg.max_text_chars}")
            if it.item_id in seen:
                raise DuplicateItemError(f"item {it.item_id!r} occurs twice in the batch")
            seen.add(it.item_id)

    def add_feedback(self, interactions: list[Interaction]) -> dict:
        """Re-edit added items from interactions with them (see the module's docstring); blocks until the feedback
        batch is serving. Validated first (a 4xx writes nothing): only items added through ``add_items`` are
        re-edited, every history is non-empty and holds catalog items only."""
        interactions = [Interaction(it.item_id, tuple(it.history)) for it in interactions]
        self._validate_feedback(interactions)
        if self.leader is not None:
            return self._served(self.leader.add_feedback(interactions))
        return self._on_worker(self._feedback, interactions)

    def _validate_feedback(self, interactions: list[Interaction]) -> None:
        """The checks that need no model: count, item ids, history lengths."""
        if not interactions:
            raise EmptyInputError("no interactions given; send at least one {item_id, history}")
        if len(interactions) > self.cfg.max_interactions_per_batch:
            raise PayloadTooLargeError(f"{len(interactions)} interactions in one batch; at most "
                                       f"{self.cfg.max_interactions_per_batch}")
        for it in interactions:
            if not it.item_id.strip():
                raise EmptyInputError("an interaction's item id is empty")
            if not it.history:
                raise EmptyInputError(f"an interaction with {it.item_id!r} has an empty history: a re-edit learns "
                                      "what the user had before the item")
            if len(it.history) > self.cfg.max_history_items:
                raise PayloadTooLargeError(f"a history of {len(it.history)} items; at most "
                                           f"{self.cfg.max_history_items} (the model reads the last "
                                           f"{self.max_history})")

    def roll_back(self, batch_id: str) -> dict:
        """Remove an active batch (exact for the newest item batch; otherwise the batches whose requests change are
        solved again); blocks."""
        if self.leader is not None:
            return self._served(self.leader.roll_back(batch_id))
        return self._on_worker(self._roll_back, batch_id)

    # -- following the leader (a follower only) -----------------------------------------------------------------
    def sync(self) -> bool:
        """Load the registry's state when its ``model_version`` is not the one served; True when it swapped."""
        with self._sync_lock:
            if self.registry.model_version() == self.snapshot.version:
                return False
            self.snapshot = self._restore(read_only=True)
            return True

    def _try_sync(self) -> bool:
        """``sync``, where a load that a concurrent commit raced (or a half-written artifact) is dropped: False, and
        the next poll tries again; any other failure propagates."""
        try:
            return self.sync()
        except (StaleLoadError, ArtifactMismatchError, OSError) as err:
            log.debug("replica %s: load dropped (%s); trying again", self.name, err)
            return False

    def _follow(self) -> None:
        while not self._stop.wait(self.cfg.sync_interval_s):
            try:
                self._try_sync()
            except Exception:  # noqa: BLE001 - the follower keeps serving its snapshot and keeps polling
                log.exception("replica %s: loading the registry's state failed", self.name)

    def _served(self, answer: dict) -> dict:
        """``answer`` (of a change the leader made) once this follower serves its ``model_version`` or a later one."""
        deadline = time.monotonic() + self.cfg.follow_timeout_s
        while self.snapshot.version < answer["model_version"]:
            if time.monotonic() > deadline:
                raise EditFailedError(f"the leader serves model_version {answer['model_version']}, replica "
                                      f"{self.name} still {self.snapshot.version} after "
                                      f"{self.cfg.follow_timeout_s:g} s")
            self._try_sync()
            time.sleep(self.cfg.sync_interval_s / 4)
        return answer

    def _warm_c0(self) -> bool:
        """The layer map (``_located_start``, with an empty stack) and ``ColdItemEditor.warm_c0`` on the served
        stack; a failure is logged (the first add probes and computes C0 then)."""
        try:
            start = time.perf_counter()
            if self.snapshot.artifact is None and self.cfg.probe_at_start:
                self._start_stack = self._located_start()
                if self._start_stack is not None:
                    log.info("%s: layer map %s located in %.1f s", self.name, self._start_stack.layers,
                             time.perf_counter() - start)
            computed = self.editor.warm_c0(self.snapshot.catalog.codes, self.snapshot.artifact or self._start_stack)
            if computed:
                log.info("%s: C0 computed and cached in %.1f s", self.name, time.perf_counter() - start)
            return computed
        except Exception:  # noqa: BLE001 - serving goes on; the first add computes C0 itself
            log.exception("%s: computing C0 at start failed", self.name)
            return False

    def _located_start(self) -> EditArtifact | None:
        """The empty stack holding the layer map, located by the editor's probe on the text-only requests (the
        run's knowledge source, as ``POST /items`` builds them) of a seeded sample of up to ``START_PROBE_ITEMS`` of
        the run's own new items (catalog items absent from training; none of their interactions is read): what
        the first add would otherwise probe on its own batch. None when the layer policy needs no probe or no new
        item of the run's catalog has pseudo-histories."""
        if self.editor.cfg.layer_policy not in ("probe", "worst"):
            return None
        cold = np.flatnonzero(~self.base_catalog.warm)
        if len(cold) == 0:
            return None
        rng = np.random.default_rng(self.editor.cfg.seed + 7)
        sample = np.sort(rng.choice(cold, min(len(cold), START_PROBE_ITEMS), replace=False))
        requests = text_requests(self.run.prepared.split.train, self.base_catalog, sample, self.run.config.knowledge)
        if len(requests) == 0:
            return None
        return self.editor.start_stack(requests, self.base_catalog.codes)

    def _on_worker(self, fn, *args):
        return self._queue(lambda: fn(*args)).result()

    def _queue(self, work) -> Future:
        """Hand ``work`` to the edit worker, counted in ``edit_queue`` until it has run."""
        with self._queued_lock:
            self._queued += 1
        try:
            future = self._worker.submit(work)
        except BaseException:
            with self._queued_lock:
                self._queued -= 1
            raise
        future.add_done_callback(lambda _: self._done())
        return future

    def _done(self) -> None:
        with self._queued_lock:
            self._queued -= 1

    # -- the edit worker -------------------------------------------------------------------------------------
    def _add(self, items: list[NewItem], job_id: str | None = None) -> dict:
        start = time.perf_counter()
        snap, timings = self.snapshot, {}
        for it in items:
            if it.item_id in snap.catalog.index:
                origin = snap.catalog.origin(it.item_id)
                raise DuplicateItemError(f"item {it.item_id!r} is already in the catalog"
                                         + (f" (added by batch {origin})" if origin else ""))
        seq = self.registry.next_seq()
        batch_id = f"b{seq:06d}"
        t0 = time.perf_counter()
        embeddings = embed_items(self.encoder, [it.text for it in items], self.embedding_cache)
        timings["embed"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        catalog = snap.catalog.extended(batch_id, [it.item_id for it in items], [it.text for it in items],
                                        embeddings)
        timings["sids"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        new = catalog.batch_indices(batch_id)
        requests = knowledge_for(self.run.prepared.split.train, catalog, new, self.run.config.knowledge)
        timings["knowledge"] = time.perf_counter() - t0
        self.registry.add_pending(seq, catalog.batches[-1], job_id)  # validated: from here on the batch is on record

        def solve():
            artifact, report = self.editor.edit(requests, catalog.codes, catalog.item_ids,
                                                snap.artifact if snap.artifact is not None else self._start_stack)
            return artifact, report, {}

        nxt, report = self._apply("add", batch_id, catalog, len(requests), len(items), solve, start, timings)
        added = self._recommendable(nxt, requests, new)
        reach = self._reach(nxt, added, new, timings)
        return {"batch_id": batch_id, "status": "active", "model_version": nxt.version, "items": added,
                "n_requests": len(requests), "layers": report.layers, "efficacy": report.efficacy,
                "timings_s": _rounded(timings), "c0_cached": report.c0_cached, "warnings": reach["warnings"],
                "exposure_estimate": reach["estimate"]}

    def _feedback(self, interactions: list[Interaction]) -> dict:
        start = time.perf_counter()
        snap, timings = self.snapshot, {}
        catalog = snap.catalog
        for it in interactions:
            if it.item_id not in catalog.index:
                raise UnknownItemError(f"item {it.item_id!r} is not in the catalog")
            if catalog.index[it.item_id] < catalog.n_base:
                raise InvalidRequestError(f"item {it.item_id!r} is one of the run's own items: feedback re-edits "
                                          "items added through POST /items (the model learnt the run's items in "
                                          "training)")
        catalog.histories([list(it.history) for it in interactions], self.max_history)  # unknown ids: 422 now
        items = list(dict.fromkeys(it.item_id for it in interactions))
        earlier = self._feedback_held(items)
        seq = self.registry.next_seq()
        batch_id = f"f{seq:06d}"
        record = BatchFeedback(batch_id, [i for i, _ in earlier] + [it.item_id for it in interactions],
                               [h for _, h in earlier] + [list(it.history) for it in interactions])
        requests = self._feedback_requests(record, catalog)
        new = np.asarray([catalog.index[i] for i in items], np.int64)
        self.registry.add_pending_feedback(seq, record)  # validated: from here on the batch is on record
        first = next(j for j, b in enumerate(snap.artifact.batches) if np.isin(b.requests.items, new).any())
        solved_again = [b.batch_id for b in snap.artifact.batches[first:]]  # replace_items keeps their ids

        def solve():
            artifact, reports = self.editor.replace_items(snap.artifact, new, requests, catalog.codes,
                                                          catalog.item_ids)
            return artifact, reports[-1], {b.batch_id: delta_fingerprint(b) for b in artifact.batches[first:-1]}

        nxt, report = self._apply("feedback", batch_id, catalog, len(requests), len(items), solve, start, timings)
        re_edited = self._recommendable(nxt, requests, new)
        reach = self._reach(nxt, re_edited, new, timings)
        return {"batch_id": batch_id, "kind": "feedback", "status": "active", "model_version": nxt.version,
                "items": re_edited, "n_interactions": len(interactions), "n_requests": len(requests),
                "solved_again": solved_again, "efficacy": report.efficacy,
                "timings_s": _rounded(timings), "warnings": reach["warnings"], "exposure_estimate": reach["estimate"]}

    def _apply(self, kind: str, batch_id: str, catalog: Catalog, n_requests: int, n_items: int, solve, start: float,
               timings: dict) -> tuple[Snapshot, EditReport]:
        """Commit a pending batch: ``solve()`` -> (the stack with the batch on top, its report, the new ΔW
        fingerprints of the earlier batches it solved again), then the batch renamed to ``batch_id``, the next
        snapshot, the artifact saved (``<kind>-<batch id>``), the registry activated, and the swap. A failure at any
        step marks the batch failed, removes what was written and leaves the old snapshot serving."""
        version_dir = None
        try:
            t0 = time.perf_counter()
            artifact, report, recomputed = solve()
            artifact = with_batch_id(artifact, batch_id)
            timings["edit"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            nxt = build_snapshot(self.snapshot.version + 1, catalog, self.run.recommender, artifact,
                                 self.trigger, self.run.config.prior, self.insertion, self.text_edits)
            timings["snapshot"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            version_dir = self._save(artifact, f"{kind}-{batch_id}")
            timings["save"] = time.perf_counter() - t0
            timings["total"] = time.perf_counter() - start
            self.registry.activate(batch_id, version_dir, delta_fingerprint(artifact.batches[-1]), n_requests,
                                   _rounded(timings), _report(report), nxt.version, recomputed)
        except Exception as err:
            self.registry.fail(batch_id, f"{type(err).__name__}: {err}")
            if version_dir:
                shutil.rmtree(self.state_dir / version_dir, ignore_errors=True)
            self.metrics.observe_edit(kind, batch_id, time.perf_counter() - start, n_items, False)
            what = "edit" if kind == "add" else "re-edit"
            raise EditFailedError(f"{what} of batch {batch_id} failed ({type(err).__name__}: {err}); "
                                  "the previous model keeps serving") from err
        self.snapshot = nxt  # the swap: one reference assignment
        self._remove_stale_artifacts(version_dir)
        self.metrics.observe_edit(kind, batch_id, timings["total"], n_items, True, _rounded(timings))
        return nxt, report

    def _feedback_held(self, items: list[str]) -> list[tuple[str, list[str]]]:
        """The interactions the service holds for ``items``: per item, the rows of the newest active feedback batch
        that teaches it (each feedback batch holds all of its items' interactions up to it), oldest batch first."""
        latest: dict[str, str] = {}  # item -> its newest feedback batch
        held = self.registry.active_feedback()
        for batch in held:
            for item in batch.items:
                if item in items:
                    latest[item] = batch.batch_id
        return [(item, history) for batch in held for item, history in zip(batch.item_ids, batch.histories)
                if latest.get(item) == batch.batch_id]

    def _feedback_requests(self, record: BatchFeedback, catalog: Catalog) -> EditRequests:
        """A feedback batch's interactions as edit requests over ``catalog`` (item ids mapped to its indices)."""
        return EditRequests(catalog.histories(record.histories, self.max_history),
                            np.asarray([catalog.index[i] for i in record.item_ids], np.int64),
                            np.full(len(record.item_ids), -1, np.int64))

    def _roll_back(self, batch_id: str) -> dict:
        start = time.perf_counter()
        snap = self.snapshot
        active = snap.active_batches
        if batch_id not in active:
            records = self.registry.records(batch_id)
            if not records:
                raise UnknownBatchError(f"no batch {batch_id!r}; GET /edits lists them")
            raise BatchNotActiveError(f"batch {batch_id} is {records[0].status}, not active; nothing to roll back")
        i = active.index(batch_id)
        feedback = {b.batch_id: b for b in self.registry.active_feedback()}
        item_batches = {b.batch_id: b for b in snap.catalog.batches}
        if batch_id in item_batches:
            gone = set(item_batches[batch_id].item_ids)
            users = [f.batch_id for f in feedback.values()
                     if gone & (set(f.item_ids) | {h for history in f.histories for h in history})]
            if users:
                raise BatchInUseError(f"the items of batch {batch_id} are re-edited by, or in the histories of, "
                                      f"feedback batch{'es' if len(users) > 1 else ''} {', '.join(users)}: roll "
                                      f"{'those' if len(users) > 1 else 'it'} back first")
            k = [b.batch_id for b in snap.catalog.batches].index(batch_id)
            catalog = snap.catalog.truncated(self.base_catalog, k).extended_many(snap.catalog.batches[k + 1:])
        else:
            catalog = snap.catalog  # a feedback batch adds no item
        remaining = [b for b in active if b != batch_id]
        teaches = {b: set(item_batches[b].item_ids) if b in item_batches else set(feedback[b].item_ids)
                   for b in active}
        start_at = self._first_changed(active, i, teaches, feedback)
        recomputed, version_dir = {}, None
        try:
            # ΔW of the batches below start_at bit-identical; the statistic minus the removed batches' replayed keys
            artifact = self.editor.truncated(snap.artifact, start_at, snap.catalog.codes)
            replays = {b.batch_id: b for b in catalog.batches}
            for j, later in enumerate(remaining):
                if j < start_at:
                    continue
                replaced = set().union(*(teaches[f] for f in remaining[j + 1:] if f in feedback))
                requests = self._requests_of(later, catalog, feedback)
                requests = requests.subset(np.flatnonzero(~np.isin(
                    requests.items, [catalog.index[x] for x in replaced if x in catalog.index])))
                artifact, _ = self.editor.solved_again(artifact, snap.artifact.batches[active.index(later)],
                                                       requests, catalog.codes, catalog.item_ids)
                sids = replays[later].sids if later in replays else np.zeros((0, catalog.codes.shape[1]), np.int64)
                recomputed[later] = (sids, delta_fingerprint(artifact.batches[-1]))
            nxt = build_snapshot(snap.version + 1, catalog, self.run.recommender, artifact,
                                 self.trigger, self.run.config.prior, self.insertion, self.text_edits)
            version_dir = self._save(artifact, f"rollback-{batch_id}")
            self.registry.roll_back(batch_id, version_dir, recomputed, nxt.version)
        except Exception as err:
            if version_dir:
                shutil.rmtree(self.state_dir / version_dir, ignore_errors=True)
            self.metrics.observe_edit("rollback", batch_id, time.perf_counter() - start, 0, False)
            raise EditFailedError(f"rollback of {batch_id} failed ({type(err).__name__}: {err}); "
                                  "nothing changed") from err
        self.snapshot = nxt
        self._remove_stale_artifacts(version_dir)
        seconds = time.perf_counter() - start
        self.metrics.observe_edit("rollback", batch_id, seconds, len(teaches[batch_id]), True)
        return {"batch_id": batch_id, "status": "rolled_back", "exact": not recomputed,
                "recomputed": list(recomputed), "model_version": nxt.version, "seconds": round(seconds, 4)}

    @staticmethod
    def _first_changed(active: list[str], i: int, teaches: dict[str, set[str]],
                       feedback: dict[str, BatchFeedback]) -> int:
        """The lowest stack position whose requests change when ``active[i]`` is rolled back: ``i`` itself, or, for
        a feedback batch, the newest batch below it that teaches an item it re-edited (that batch gets the item's
        rows back) unless a feedback batch above it re-edits the item again."""
        if active[i] not in feedback:
            return i
        later = set().union(*(teaches[b] for b in active[i + 1:] if b in feedback))
        start = i
        for item in teaches[active[i]] - later:
            below = [j for j in range(i) if item in teaches[active[j]]]
            if below:
                start = min(start, below[-1])
        return start

    def _requests_of(self, batch_id: str, catalog: Catalog, feedback: dict[str, BatchFeedback]) -> EditRequests:
        """All the requests a batch teaches over ``catalog`` as the registry defines them, before any later
        feedback takes rows out: its items' pseudo-histories (a pure function of the catalog) or its
        interactions."""
        if batch_id in feedback:
            return self._feedback_requests(feedback[batch_id], catalog)
        return knowledge_for(self.run.prepared.split.train, catalog, catalog.batch_indices(batch_id),
                             self.run.config.knowledge)

    def _reach(self, snap: Snapshot, entries: list[dict], new: np.ndarray, timings: dict) -> dict:
        """Each entry (one per item of ``new``) updated with its exposure on the validation sample (``_exposure``);
        returns the estimate (``warnings``, ``estimate``) and records its seconds in ``timings``. Run after the swap:
        the change is serving already, so a failed estimate is a warning, not a failed change, and its time is not
        part of the change's total."""
        t0 = time.perf_counter()
        try:
            reach = self._exposure(snap, new)
        except Exception as err:  # noqa: BLE001
            reach = {"items": [{"id": a["item_id"], "exposure": None, "status": "active"} for a in entries],
                     "warnings": [f"exposure not estimated ({type(err).__name__}: {err})"], "estimate": None}
        timings["exposure"] = time.perf_counter() - t0
        for entry, exposure in zip(entries, reach["items"]):
            entry.update(exposure)
        return reach

    def _recommendable(self, snap: Snapshot, requests, new: np.ndarray) -> list[dict]:
        """Per new item: its SID, its first pseudo-history and its rank in the top-k the new snapshot serves for
        that history (its recipe: the edits that fire, then the insertion or the prior; not counted by the exposure
        cap; None: not in the top-k) — the service's own check that the item is recommendable."""
        first = {int(item): row for row, item in reversed(list(enumerate(requests.items)))}
        rows = [first[int(i)] for i in new]
        beams = snap.rank(requests.histories[rows], self.decode)
        out = []
        for j, i in enumerate(new):
            hits = np.flatnonzero(beams.items[j].numpy() == i)
            history = [snap.catalog.item_ids[h] for h in requests.histories[rows[j]] if h >= 0]
            out.append({"item_id": snap.catalog.item_ids[i], "sid": snap.catalog.codes[i].tolist(),
                        "n_histories": int((requests.items == i).sum()), "probe_history": history,
                        "rank": int(hits[0]) + 1 if len(hits) else None})
        return out

    # -- persistence -----------------------------------------------------------------------------------------
    def _save(self, artifact: EditArtifact, name: str) -> str:
        """Write the whole active stack as a new immutable artifact version; returns its path in the state dir."""
        rel = f"{ARTIFACTS}/{name}"
        artifact.save(self.state_dir / rel)
        return rel

    def _remove_stale_artifacts(self, keep: str | None) -> None:
        folder = self.state_dir / ARTIFACTS
        if folder.exists():
            for path in folder.iterdir():
                if f"{ARTIFACTS}/{path.name}" != keep:
                    shutil.rmtree(path, ignore_errors=True)

    def _restore(self, read_only: bool = False, reuse: bool = True) -> Snapshot:
        """Catalog and edit stack exactly as the registry last committed them, checked against each other.
        ``read_only`` (a follower): no stale artifact is removed, and a load during which the registry moved raises
        ``StaleLoadError``. ``reuse``: what the served snapshot holds already (its catalog's batches, the batch
        files it read, their checked digests) is taken over, so a follower's load of the next version costs what
        is new in it; False rebuilds everything, as a restart does."""
        version = self.registry.model_version()
        stored = self.registry.active_batches()
        served = getattr(self, "snapshot", None) if reuse else None
        digests = self._verified if reuse else {}
        catalog = self._replayed([items for items, _ in stored if isinstance(items, BatchItems)],
                                 served.catalog if served is not None else None)
        rel = self.registry.artifact_dir()
        artifact = EditArtifact.load(self.state_dir / rel, self.run.base_hash,
                                     reuse=served.artifact if served is not None else None) if rel else None
        on_disk = [b.batch_id for b in artifact.batches] if artifact else []
        if on_disk != [items.batch_id for items, _ in stored]:
            raise ArtifactMismatchError(f"{self.state_dir / str(rel)} holds batches {on_disk}, the registry "
                                        f"{[items.batch_id for items, _ in stored]}")
        verified = {}
        for batch, (items, digest) in zip(artifact.batches if artifact else [], stored):
            known = digests.get(id(batch))  # the same batch object, its digest checked by an earlier load
            checked = known is not None and known[0] is batch and known[1] == digest
            if not _sids_agree(batch, catalog) or not (checked or delta_fingerprint(batch) == digest):
                raise ArtifactMismatchError(f"batch {batch.batch_id}: the artifact's ΔW or SIDs differ from the "
                                            "registry's record")
            verified[id(batch)] = (batch, digest)
        if self.registry.model_version() != version:
            raise StaleLoadError(f"model_version moved from {version} while loading")
        self._verified = verified
        if not read_only:
            self._remove_stale_artifacts(rel)
        if artifact is not None:
            artifact = self._with_requests(artifact, catalog)
        return build_snapshot(version, catalog, self.run.recommender, artifact,
                              self.trigger, self.run.config.prior, self.insertion, self.text_edits)

    def _replayed(self, stored: list[BatchItems], served: Catalog | None) -> Catalog:
        """The base catalog plus the registry's batches, SIDs replayed by the tokenizer and checked against the
        recorded ones. ``served``: a catalog built earlier; when its batches begin the registry's (the same ids
        and SIDs: the registry only appends), only the rest are replayed onto it."""
        k = len(served.batches) if served is not None else 0
        if not (served is not None and k <= len(stored) and all(
                a.batch_id == b.batch_id and np.array_equal(a.sids, b.sids)
                for a, b in zip(served.batches, stored[:k]))):
            served, k = self.base_catalog, 0
        catalog = served.extended_many(stored[k:])
        for replay, items in zip(catalog.batches[k:], stored[k:]):
            if not np.array_equal(replay.sids, items.sids):
                raise ArtifactMismatchError(f"{self.registry.path}: SIDs of batch {items.batch_id} differ from the "
                                            "tokenizer's replay (was the run's tokenizer changed?)")
        return catalog

    def _with_requests(self, artifact: EditArtifact, catalog: Catalog) -> EditArtifact:
        """Batches of a format-1 artifact hold no requests: they get the knowledge the service edited them from
        (text-only knowledge is a pure function of the catalog), so that their keys can be replayed."""
        if all(b.requests is not None for b in artifact.batches):
            return artifact
        out = artifact.copy()
        out.batches = [b if b.requests is not None else
                       replace(b, requests=knowledge_for(self.run.prepared.split.train, catalog,
                                                         catalog.batch_indices(b.batch_id),
                                                         self.run.config.knowledge))
                       for b in artifact.batches]
        return out


def _sids_agree(batch: EditBatch, catalog: Catalog) -> bool:
    """The SIDs a stored batch was edited with are those the replayed catalog gives the items it teaches (a batch
    teaches its own items, those of them no feedback re-edited since, or, for a feedback batch, the items it
    re-edits)."""
    if not all(item in catalog.index for item in batch.item_ids):
        return False
    rows = np.asarray([catalog.index[item] for item in batch.item_ids], np.int64)
    return np.array_equal(np.asarray(batch.sids).reshape(len(rows), -1), catalog.codes[rows]) if len(rows) else \
        np.asarray(batch.sids).size == 0


def _rounded(timings: dict) -> dict:
    return {k: round(v, 4) for k, v in timings.items()}


def _report(report) -> dict:
    return {"layers": report.layers, "n_requests": report.n_requests, "converged": report.converged,
            "efficacy": report.efficacy, "edit_timings_s": _rounded(report.timings_s), "c0_cached": report.c0_cached}


def _caches_in_run_dir(run: LoadedRun) -> LoadedRun:
    """The run with a relative ``cache_dir`` taken against the run directory: the caches the service writes (added
    items' embeddings, the edit's C0) belong to the run, wherever the service was started from."""
    cache = Path(run.config.cache_dir)
    if cache.is_absolute():
        return run
    return replace(run, config=replace(run.config, cache_dir=str(Path(run.run_dir) / cache)))
