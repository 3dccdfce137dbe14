"""The edit registry: every batch the service was given (new items, or feedback that re-edits added items), its
items (text, embedding, SID) or interactions, its status and timings, and which saved edit artifact holds the active
stack — in one SQLite file, ``<state dir>/registry.sqlite``, or in a PostgreSQL database (``registry_db``).

Schema (``SCHEMA``):

- ``meta(key, value)``: ``base_hash`` (the base model the state belongs to), ``artifact_dir`` (the saved
  ``EditArtifact`` of the active stack, relative to the state dir; absent until the first edit).
- ``batches(batch_id, seq, status, created_at, applied_at, rolled_back_at, n_items, n_requests, delta_sha256,
  timings, report, error)``: ``status`` is ``pending`` (validated, edit running), ``active``, ``rolled_back`` or
  ``failed``; active batches are applied in ``seq`` order; ``delta_sha256`` fingerprints the batch's ΔW in the
  artifact (checked on restart).
- ``items(batch_id, position, item_id, text, embedding, sid)``: the batch's items in order; ``embedding`` is the
  float32 text embedding (little-endian bytes), ``sid`` the JSON list of codes.
- ``feedback(batch_id, position, item_id, history)``: a feedback batch's interactions in order: a user whose history
  (JSON list of item ids, oldest first) was followed by the added item ``item_id``. A feedback batch adds no item
  (no ``items`` rows; ``n_items`` counts the items it re-edits); ``kind`` in ``BatchRecord`` tells the two apart.
- ``jobs(job_id, idempotency_key, request_sha256, state, created_at, started_at, finished_at, batch_id, item_ids,
  result, error)``: one asynchronous add (``POST /items``); ``state`` is ``queued``, ``running``, ``succeeded`` or
  ``failed``; ``result`` is the add's JSON answer, ``error`` ``{status_code, error, detail}``. An idempotency key
  names one job for good (``request_sha256`` tells a retry from a different request under the same key).
- ``meta.model_version``: the version of the serving model, raised by one in the transaction of every add and
  rollback that changes it, so it never goes back, across restarts and rollbacks alike.

Crash safety: artifact versions are immutable directories; the service writes a new one first and then commits one
transaction that points ``artifact_dir`` at it and updates the batches. A crash before the commit leaves the old
pointer (the orphan directory is removed on restart); ``pending`` batches found on restart were interrupted and are
marked ``failed``, and so are jobs found ``queued`` or ``running`` (their process died with them). Batch writes come
from the single edit worker; reads and job records may come from any thread (one lock).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrecedit.errors import ArtifactMismatchError
from genrecedit.serving.registry_db import Cursor, PostgresDatabase, SQLiteDatabase

REGISTRY_FILE = "registry.sqlite"
STATUSES = ("pending", "active", "rolled_back", "failed")
INTERRUPTED = "interrupted: the service stopped before this edit was applied"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'rolled_back', 'failed')),
    created_at REAL NOT NULL,
    applied_at REAL,
    rolled_back_at REAL,
    n_items INTEGER NOT NULL,
    n_requests INTEGER,
    delta_sha256 TEXT,
    timings TEXT,
    report TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS items (
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    text TEXT NOT NULL,
    embedding BLOB NOT NULL,
    sid TEXT NOT NULL,
    PRIMARY KEY (batch_id, position)
);
CREATE INDEX IF NOT EXISTS items_by_id ON items(item_id);
CREATE TABLE IF NOT EXISTS feedback (
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    history TEXT NOT NULL,
    PRIMARY KEY (batch_id, position)
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    request_sha256 TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    batch_id TEXT,
    item_ids TEXT NOT NULL,
    result TEXT,
    error TEXT
);
"""
JOB_STATES = ("queued", "running", "succeeded", "failed")
JOB_INTERRUPTED = "interrupted: the service stopped before this job finished; send the items again with a new key"


@dataclass(frozen=True)
class BatchItems:
    """An item batch as the registry keeps it: ids [m], texts [m], embeddings [m, d] float32, sids [m, P] int64."""

    batch_id: str
    item_ids: list[str]
    texts: list[str]
    embeddings: np.ndarray
    sids: np.ndarray


@dataclass(frozen=True)
class BatchFeedback:
    """A feedback batch as the registry keeps it: per interaction, the added item a user went on to
    (``item_ids`` [r]) and that user's history before it (``histories`` [r], item ids, oldest first)."""

    batch_id: str
    item_ids: list[str]
    histories: list[list[str]]

    @property
    def items(self) -> list[str]:
        """The items it re-edits, each once, in order of first interaction."""
        return list(dict.fromkeys(self.item_ids))


@dataclass(frozen=True)
class BatchRecord:
    """One row of ``batches`` plus its item ids (a feedback batch: the items it re-edits) and its ``kind``
    (``items`` or ``feedback``), JSON-ready through ``to_dict``."""

    batch_id: str
    seq: int
    status: str
    created_at: float
    applied_at: float | None
    rolled_back_at: float | None
    n_items: int
    n_requests: int | None
    delta_sha256: str | None
    timings: dict | None
    report: dict | None
    error: str | None
    item_ids: list[str]
    kind: str = "items"

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "delta_sha256"}


@dataclass(frozen=True)
class JobRecord:
    """One row of ``jobs``, JSON-ready through ``to_dict`` (timings in seconds: queued, running, total)."""

    job_id: str
    idempotency_key: str
    request_sha256: str
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    batch_id: str | None
    item_ids: list[str]
    result: dict | None
    error: dict | None

    def to_dict(self) -> dict:
        timings = {"queued": (self.started_at or self.finished_at or time.time()) - self.created_at}
        if self.started_at is not None:
            timings["running"] = (self.finished_at or time.time()) - self.started_at
        if self.finished_at is not None:
            timings["total"] = self.finished_at - self.created_at
        return {"job_id": self.job_id, "idempotency_key": self.idempotency_key, "state": self.state,
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
                "timings_s": {k: round(max(v, 0.0), 4) for k, v in timings.items()}, "batch_id": self.batch_id,
                "item_ids": self.item_ids, "result": self.result, "error": self.error}


class IdempotencyConflictError(Exception):
    """An idempotency key already names a job for a different request (``job``: that job)."""

    def __init__(self, job: JobRecord) -> None:
        super().__init__(job.job_id)
        self.job = job


class Registry:
    """The record of item batches and jobs, in SQLite (``<state dir>/registry.sqlite``) or, given ``url``, in a
    PostgreSQL database (``registry_db``); every method that writes is one transaction. ``path``: where it is, for
    messages (a PostgreSQL URL without its password)."""

    def __init__(self, state_dir: Path, url: str | None = None) -> None:
        self._db = PostgresDatabase(url, SCHEMA) if url else SQLiteDatabase(Path(state_dir) / REGISTRY_FILE, SCHEMA)
        self.path = self._db.location
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- transactions ----------------------------------------------------------------------------------------
    class _Tx:
        def __init__(self, registry: "Registry") -> None:
            self.registry = registry

        def __enter__(self) -> Cursor:
            self.registry._lock.acquire()
            self.cur = self.registry._db.cursor()
            self.cur.execute(self.registry._db.begin)
            return self.cur

        def __exit__(self, exc_type, exc, tb) -> None:
            try:
                self.cur.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.registry._lock.release()

    def _transaction(self) -> "_Tx":
        return Registry._Tx(self)

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.cursor().execute(sql, args).fetchall()

    # -- meta ------------------------------------------------------------------------------------------------
    def bind_base(self, base_hash: str) -> None:
        """Tie the state to one base model; a state written for another model is refused."""
        with self._transaction() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = 'base_hash'").fetchone()
            if row is None:
                cur.execute("INSERT INTO meta VALUES ('base_hash', ?)", (base_hash,))
            elif row[0] != base_hash:
                raise ArtifactMismatchError(
                    f"{self.path} belongs to base model {row[0][:12]}, not {base_hash[:12]}; "
                    "serve that model or start with another --state-dir")

    def artifact_dir(self) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = 'artifact_dir'")
        return rows[0][0] if rows else None

    def model_version(self) -> int:
        rows = self._read("SELECT value FROM meta WHERE key = 'model_version'")
        return int(rows[0][0]) if rows else 0

    def next_seq(self) -> int:
        return int(self._read("SELECT COALESCE(MAX(seq), 0) + 1 FROM batches")[0][0])

    # -- writes (the edit worker) ----------------------------------------------------------------------------
    def add_pending(self, seq: int, batch: BatchItems, job_id: str | None = None) -> None:
        """Record a validated batch whose edit is about to run, with its items (and tie it to its job)."""
        with self._transaction() as cur:
            if job_id is not None:
                cur.execute("UPDATE jobs SET batch_id = ? WHERE job_id = ?", (batch.batch_id, job_id))
            cur.execute("INSERT INTO batches (batch_id, seq, status, created_at, n_items) "
                        "VALUES (?, ?, 'pending', ?, ?)", (batch.batch_id, seq, time.time(), len(batch.item_ids)))
            cur.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", [
                (batch.batch_id, i, item, text, np.asarray(emb, "<f4").tobytes(), json.dumps([int(c) for c in sid]))
                for i, (item, text, emb, sid) in enumerate(zip(batch.item_ids, batch.texts, batch.embeddings,
                                                               batch.sids))])

    def add_pending_feedback(self, seq: int, batch: BatchFeedback) -> None:
        """Record a validated feedback batch whose re-edit is about to run, with its interactions."""
        with self._transaction() as cur:
            cur.execute("INSERT INTO batches (batch_id, seq, status, created_at, n_items) "
                        "VALUES (?, ?, 'pending', ?, ?)", (batch.batch_id, seq, time.time(), len(batch.items)))
            cur.executemany("INSERT INTO feedback VALUES (?, ?, ?, ?)", [
                (batch.batch_id, i, item, json.dumps(list(history)))
                for i, (item, history) in enumerate(zip(batch.item_ids, batch.histories))])

    def activate(self, batch_id: str, artifact_dir: str, delta_sha256: str, n_requests: int, timings: dict,
                 report: dict, model_version: int, recomputed: dict[str, str] | None = None) -> None:
        """The batch's artifact is on disk: make it active, store the new ΔW fingerprints of the earlier batches it
        solved again (``recomputed``: ``{batch_id: delta_sha256}``, a re-edit's), point at the new artifact and
        record the new model version, atomically."""
        with self._transaction() as cur:
            for other, digest in (recomputed or {}).items():
                cur.execute("UPDATE batches SET delta_sha256 = ? WHERE batch_id = ? AND status = 'active'",
                            (digest, other))
                if cur.rowcount != 1:
                    raise ArtifactMismatchError(f"batch {other} is not active in {self.path}")
            cur.execute("UPDATE batches SET status = 'active', applied_at = ?, delta_sha256 = ?, n_requests = ?, "
                        "timings = ?, report = ? WHERE batch_id = ? AND status = 'pending'",
                        (time.time(), delta_sha256, n_requests, json.dumps(timings), json.dumps(report), batch_id))
            if cur.rowcount != 1:
                raise ArtifactMismatchError(f"batch {batch_id} is not pending in {self.path}")
            _set_meta(cur, "artifact_dir", artifact_dir)
            _raise_version(cur, model_version)

    def fail(self, batch_id: str, error: str) -> None:
        with self._transaction() as cur:
            cur.execute("UPDATE batches SET status = 'failed', error = ? WHERE batch_id = ? AND status = 'pending'",
                        (error, batch_id))

    def roll_back(self, batch_id: str, artifact_dir: str, recomputed: dict[str, tuple[np.ndarray, str]],
                  model_version: int) -> None:
        """Mark ``batch_id`` rolled back, store the recomputed SIDs and ΔW fingerprints of the later batches
        (``{batch_id: (sids [m, P], delta_sha256)}``), point at the new artifact and record the new model version,
        in one transaction."""
        with self._transaction() as cur:
            cur.execute("UPDATE batches SET status = 'rolled_back', rolled_back_at = ? "
                        "WHERE batch_id = ? AND status = 'active'", (time.time(), batch_id))
            if cur.rowcount != 1:
                raise ArtifactMismatchError(f"batch {batch_id} is not active in {self.path}")
            for later, (sids, digest) in recomputed.items():
                cur.execute("UPDATE batches SET delta_sha256 = ? WHERE batch_id = ?", (digest, later))
                if len(sids):  # a feedback batch holds no items
                    cur.executemany("UPDATE items SET sid = ? WHERE batch_id = ? AND position = ?",
                                    [(json.dumps([int(c) for c in sid]), later, i) for i, sid in enumerate(sids)])
            _set_meta(cur, "artifact_dir", artifact_dir)
            _raise_version(cur, model_version)

    def fail_interrupted(self) -> list[str]:
        """Batches left ``pending`` by a crash -> ``failed``; returns their ids."""
        with self._transaction() as cur:
            ids = [r[0] for r in cur.execute("SELECT batch_id FROM batches WHERE status = 'pending'").fetchall()]
            cur.execute("UPDATE batches SET status = 'failed', error = ? WHERE status = 'pending'", (INTERRUPTED,))
        return ids

    # -- jobs ------------------------------------------------------------------------------------------------
    def create_job(self, job_id: str, key: str, request_sha256: str, item_ids: list[str]) -> tuple[JobRecord, bool]:
        """A queued job under ``key``, or the job the key already names (``(job, False)``) when the request is the
        same; ``IdempotencyConflictError`` when it names one for another request."""
        with self._transaction() as cur:
            # ON CONFLICT: another process may hold the same key (its insert waits on ours, or ours on its)
            cur.execute("INSERT INTO jobs (job_id, idempotency_key, request_sha256, state, created_at, item_ids) "
                        "VALUES (?, ?, ?, 'queued', ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
                        (job_id, key, request_sha256, time.time(), json.dumps(item_ids)))
            job = _job(cur.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?", (key,)).fetchone())
        if job.request_sha256 != request_sha256:
            raise IdempotencyConflictError(job)
        return job, job.job_id == job_id

    def start_job(self, job_id: str) -> None:
        with self._transaction() as cur:
            cur.execute("UPDATE jobs SET state = 'running', started_at = ? WHERE job_id = ? AND state = 'queued'",
                        (time.time(), job_id))

    def finish_job(self, job_id: str, result: dict | None = None, error: dict | None = None) -> None:
        """``succeeded`` with ``result``, or ``failed`` with ``error``."""
        with self._transaction() as cur:
            cur.execute("UPDATE jobs SET state = ?, finished_at = ?, result = ?, error = ? WHERE job_id = ?",
                        ("failed" if error is not None else "succeeded", time.time(),
                         None if result is None else json.dumps(result), None if error is None else json.dumps(error),
                         job_id))

    def fail_interrupted_jobs(self) -> list[str]:
        """Jobs left ``queued`` or ``running`` by a stopped process -> ``failed``; returns their ids."""
        error = json.dumps({"status_code": 500, "error": "Interrupted", "detail": JOB_INTERRUPTED})
        with self._transaction() as cur:
            ids = [r[0] for r in cur.execute("SELECT job_id FROM jobs WHERE state IN ('queued', 'running') "
                                             "ORDER BY created_at").fetchall()]
            cur.execute("UPDATE jobs SET state = 'failed', finished_at = ?, error = ? "
                        "WHERE state IN ('queued', 'running')", (time.time(), error))
        return ids

    def job_by_key(self, key: str) -> JobRecord | None:
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?", (key,))
        return _job(rows[0]) if rows else None

    def job(self, job_id: str) -> JobRecord | None:
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    # -- reads -----------------------------------------------------------------------------------------------
    def active_batches(self) -> list[tuple[BatchItems | BatchFeedback, str]]:
        """Active batches in application order (item batches and feedback batches), each with its ΔW fingerprint."""
        rows = self._read("SELECT batch_id, delta_sha256 FROM batches WHERE status = 'active' ORDER BY seq")
        feedback = {r[0] for r in self._read("SELECT DISTINCT f.batch_id FROM feedback f JOIN batches b "
                                             "ON b.batch_id = f.batch_id WHERE b.status = 'active'")}
        return [(self.batch_feedback(batch_id) if batch_id in feedback else self.batch_items(batch_id), digest)
                for batch_id, digest in rows]

    def active_feedback(self) -> list[BatchFeedback]:
        """The active feedback batches in application order."""
        rows = self._read("SELECT DISTINCT b.batch_id, b.seq FROM batches b "
                          "JOIN feedback f ON f.batch_id = b.batch_id WHERE b.status = 'active' ORDER BY b.seq")
        return [self.batch_feedback(batch_id) for batch_id, _ in rows]

    def batch_feedback(self, batch_id: str) -> BatchFeedback:
        rows = self._read("SELECT item_id, history FROM feedback WHERE batch_id = ? ORDER BY position", (batch_id,))
        return BatchFeedback(batch_id, [r[0] for r in rows], [json.loads(r[1]) for r in rows])

    def batch_items(self, batch_id: str) -> BatchItems:
        rows = self._read("SELECT item_id, text, embedding, sid FROM items WHERE batch_id = ? ORDER BY position",
                          (batch_id,))
        return BatchItems(batch_id, [r[0] for r in rows], [r[1] for r in rows],
                          np.stack([np.frombuffer(r[2], "<f4") for r in rows]).astype(np.float32),
                          np.asarray([json.loads(r[3]) for r in rows], np.int64))

    def records(self, batch_id: str | None = None) -> list[BatchRecord]:
        """Every batch (or one), oldest first."""
        where, args = ("WHERE batch_id = ?", (batch_id,)) if batch_id else ("", ())
        rows = self._read(f"SELECT batch_id, seq, status, created_at, applied_at, rolled_back_at, n_items, "
                          f"n_requests, delta_sha256, timings, report, error FROM batches {where} ORDER BY seq", args)
        out = []
        for r in rows:
            ids = [x[0] for x in self._read("SELECT item_id FROM items WHERE batch_id = ? ORDER BY position",
                                            (r[0],))]
            kind = "items"
            if not ids:
                re_edited = self.batch_feedback(r[0]).items
                kind, ids = ("feedback", re_edited) if re_edited else ("items", ids)
            out.append(BatchRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8],
                                   json.loads(r[9]) if r[9] else None, json.loads(r[10]) if r[10] else None,
                                   r[11], ids, kind))
        return out

    def counts(self) -> dict[str, int]:
        """Batches per status, plus the total numbers of item and feedback rows (a cheap "was anything written?"
        check)."""
        out = {s: 0 for s in STATUSES}
        out.update(dict(self._read("SELECT status, COUNT(*) FROM batches GROUP BY status")))
        out["item_rows"] = int(self._read("SELECT COUNT(*) FROM items")[0][0])
        out["feedback_rows"] = int(self._read("SELECT COUNT(*) FROM feedback")[0][0])
        return out


def _set_meta(cur: Cursor, key: str, value: str) -> None:
    cur.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))


def _raise_version(cur: Cursor, version: int) -> None:
    """Record the serving model's version; refuses to go back (two writers, or a stale snapshot)."""
    row = cur.execute("SELECT value FROM meta WHERE key = 'model_version'").fetchone()
    if row is not None and int(row[0]) >= version:
        raise ArtifactMismatchError(f"model version {version} is not above the recorded {row[0]}")
    _set_meta(cur, "model_version", str(version))


_JOB_COLUMNS = ("job_id, idempotency_key, request_sha256, state, created_at, started_at, finished_at, batch_id, "
                "item_ids, result, error")


def _job(row: tuple) -> JobRecord:
    return JobRecord(*row[:8], json.loads(row[8]), json.loads(row[9]) if row[9] else None,
                     json.loads(row[10]) if row[10] else None)
