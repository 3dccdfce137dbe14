"""Adds as jobs: each ``POST /items`` is recorded in the registry under its idempotency key, run on the service's
edit worker, and finished with the add's answer or its error, so that its state outlives the request and the
process (``Registry`` keeps the jobs; a restart fails the ones it finds unfinished)."""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from concurrent.futures import Future
from typing import Callable

from genrecedit.serving.errors import IdempotencyKeyReusedError, InvalidRequestError, UnknownJobError, error_body
from genrecedit.serving.registry import IdempotencyConflictError, JobRecord, Registry

MAX_KEY_CHARS = 200
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"  # printable ASCII, no spaces

# (the work to run on the edit worker) -> its future
Submit = Callable[[Callable[[], None]], Future]


class AddJobs:
    """Creates, runs and answers for jobs; ``submit`` hands the work to the one edit worker (arrival order)."""

    def __init__(self, registry: Registry, submit: Submit) -> None:
        self.registry = registry
        self._submit = submit
        self._running: dict[str, Future] = {}  # this process's unfinished jobs
        self._lock = threading.Lock()

    def create(self, key: str | None, request: list[list[str]], item_ids: list[str], check: Callable[[], None],
               work: Callable[[str], dict]) -> tuple[dict, bool]:
        """The job for ``request`` (its JSON-able content) under ``key`` and whether it was created now.

        A key that names a job for the same request returns that job (a retry) and runs nothing; for another
        request, ``IdempotencyKeyReusedError``. For a new key ``check()`` validates first (raising records
        nothing), then the job is recorded and ``work(job_id)`` queued: its answer becomes the job's result, its
        exception the job's error. No key: one is drawn (the job says which)."""
        key = key if key is not None else f"auto-{secrets.token_hex(12)}"
        if not 0 < len(key) <= MAX_KEY_CHARS or not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
            raise InvalidRequestError(f"Idempotency-Key must be 1-{MAX_KEY_CHARS} printable ASCII characters "
                                      "without spaces")
        digest = hashlib.sha256(json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()
        known = self.registry.job_by_key(key)
        if known is not None:
            if known.request_sha256 != digest:
                raise _key_reused(key, known)
            return known.to_dict(), False
        check()
        try:
            job, created = self.registry.create_job(f"job-{secrets.token_hex(8)}", key, digest, item_ids)
        except IdempotencyConflictError as err:  # the same key, sent concurrently with another request
            raise _key_reused(key, err.job) from None
        if created:
            with self._lock:  # held until the future is filed, so that the job's own removal comes after
                self._running[job.job_id] = self._submit(lambda: self._run(job.job_id, work))
        return job.to_dict(), created

    def get(self, job_id: str) -> dict:
        record = self.registry.job(job_id)
        if record is None:
            raise UnknownJobError(f"no job {job_id!r}")
        return record.to_dict()

    def wait(self, job_id: str, timeout: float | None = None) -> dict:
        """Block until the job has finished (when it runs in this process) and return its record."""
        with self._lock:
            future = self._running.get(job_id)
        if future is not None:
            future.result(timeout)
        return self.get(job_id)

    def _run(self, job_id: str, work: Callable[[str], dict]) -> None:
        try:
            self.registry.start_job(job_id)
            try:
                result = work(job_id)
            except Exception as err:  # noqa: BLE001 - recorded on the job; the worker goes on
                self.registry.finish_job(job_id, error=error_body(err))
            else:
                self.registry.finish_job(job_id, result=result)
        finally:
            with self._lock:
                self._running.pop(job_id, None)


def _key_reused(key: str, job: JobRecord) -> IdempotencyKeyReusedError:
    return IdempotencyKeyReusedError(f"Idempotency-Key {key!r} already names job {job.job_id} for other items; "
                                     "send a new key for a new request")
