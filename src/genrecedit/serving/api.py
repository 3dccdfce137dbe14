"""HTTP API over a ``LiveService`` (FastAPI; OpenAPI docs at ``/docs``, served offline). Started by ``genrecedit
serve``.

Errors are JSON ``{"detail": message, "error": type}``: 400 malformed JSON; 401 a mutating endpoint without the
right ``X-API-Key``; 403 a mutating endpoint when no key is configured; 404 unknown item, batch or job id in the
URL; 409 duplicate item id, a batch that is not active, an item batch whose items active feedback re-edits, an
Idempotency-Key reused for other items; 413 too many items / too long a text or history / too many interactions /
too large a body; 422 a missing or mistyped field (types are strict: ``"5"`` is not a number), an invalid item id,
an empty text, an unknown item in a history, ``k`` above the beam, an item with no pseudo-histories, feedback on an
item that was not added or with an empty history; 500 an edit that failed (the previous model keeps serving).
Nothing is written for a 4xx.
"""
# no "from __future__ import annotations": the request schema is built per service (k ≤ its beam), and FastAPI
# reads a route's parameter types from its live annotations

import http
import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from genrecedit.errors import GenRecEditError
from genrecedit.serving.access import ApiKeyCheck, BodySizeLimit, load_api_key, mount_offline_docs
from genrecedit.serving.errors import UnknownBatchError, http_status
from genrecedit.serving.service import (ITEM_ID_PATTERN, MAX_ID_CHARS, Interaction, LiveService, NewItem,
                                        ServiceConfig)

log = logging.getLogger(__name__)
STRICT = ConfigDict(extra="forbid", strict=True)


def _recommend_request(beam: int, default_k: int) -> type[BaseModel]:
    """The request schema of one service: ``k`` is bounded by its beam width."""

    class RecommendRequest(BaseModel):
        model_config = STRICT
        history: list[str] = Field(description="the user's item ids, oldest first; may be empty (a new user: the "
                                               "model answers a lone EOS input). Only the most recent "
                                               "split.max_history items are read.")
        k: int | None = Field(None, ge=1, le=beam,
                              description=f"how many items, 1 to the beam width {beam} (default {default_k}); "
                                          "a larger k is refused with 422")
        exclude_seen: bool = Field(False, description="drop items of the history from the answer and fill the list "
                                                      "from the rest of the beam (fewer than k when more than "
                                                      "beam - k of the beam's items were seen)")

    return RecommendRequest


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="log-probability of the item's SID under the (edited) model")
    title: str = Field(description="the item file's title field (else its first text field); an added item: its "
                                   "text up to the first ' | '")
    text: str = Field(description="the text the item was embedded from (its text fields joined with ' | ')")
    fields: dict[str, str] = Field(description="the item file's text fields by column name (empty for added items)")


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model_version: int = Field(description="which snapshot answered (increments with every add/rollback)")
    active_batches: int


class NewItemIn(BaseModel):
    model_config = STRICT
    item_id: str = Field(description=f"new, unique id (not in the catalog): 1-{MAX_ID_CHARS} characters matching "
                                     f"{ITEM_ID_PATTERN}", json_schema_extra={"pattern": ITEM_ID_PATTERN,
                                                                              "maxLength": MAX_ID_CHARS})
    text: str = Field(description="non-empty title/description; embedded with the run's text encoder")


class AddItemsRequest(BaseModel):
    model_config = STRICT
    items: list[NewItemIn]


class JobOut(BaseModel):
    job_id: str
    idempotency_key: str = Field(description="the request's Idempotency-Key (drawn by the service when none was "
                                             "sent): a retry with it returns this job")
    state: Literal["queued", "running", "succeeded", "failed"]
    created_at: float
    started_at: float | None
    finished_at: float | None
    timings_s: dict[str, float] = Field(description="queued, running, total (seconds)")
    batch_id: str | None = Field(description="the edit batch, once the job has started it")
    item_ids: list[str]
    result: dict | None = Field(description="a succeeded job: the add's answer (AddItemsResponse: each item's SID, "
                                            "exposure and status, warnings)")
    error: dict | None = Field(description="a failed job: {status_code, error, detail}")


class AddedItem(BaseModel):
    model_config = ConfigDict(extra="allow")  # also: sid, n_histories, probe_history, rank
    item_id: str
    id: str = Field(description="the item's id (the same as item_id)")
    exposure: float | None = Field(description="share of the top-10 lists, decoded by the new model for a seeded "
                                               "sample of the run's validation histories (ServiceConfig."
                                               "exposure_cases), that hold the item; null: not estimated")
    status: Literal["active", "active_unreached", "active_overexposed"] = Field(
        description="active; active_unreached: exposure 0 (served, but in no sampled list); active_overexposed: "
                    "exposure above ServiceConfig.max_item_share")


class AddItemsResponse(BaseModel):
    model_config = ConfigDict(extra="allow")  # also: n_requests, layers, efficacy, timings_s
    batch_id: str
    status: str
    model_version: int
    items: list[AddedItem]
    warnings: list[str] = Field(description="one line per item that reaches no one or too many (see status)")
    c0_cached: bool | None = Field(None, description="the edit found C0 cached (computed at start or by an "
                                                     "earlier add); false: this add computed it, the slow path")
    exposure_estimate: dict | None = Field(description="{cases: valid, n_histories, k, max_item_share}; null: no "
                                                       "estimate (exposure_cases 0 or no validation cases)")


class InteractionIn(BaseModel):
    model_config = STRICT
    item_id: str = Field(description="an item added through POST /items (and still active)")
    history: list[str] = Field(description="the user's item ids before it, oldest first; not empty")


class FeedbackRequest(BaseModel):
    model_config = STRICT
    interactions: list[InteractionIn] = Field(description="users who went on to added items: each re-edits its "
                                                          "item from them (with the item's earlier interactions)")


class FeedbackResponse(BaseModel):
    model_config = ConfigDict(extra="allow")  # also: n_requests, efficacy, timings_s, exposure_estimate
    batch_id: str
    kind: Literal["feedback"]
    status: str
    model_version: int
    items: list[AddedItem] = Field(description="the re-edited items: SID, rank for their first interaction's "
                                               "history, exposure and status")
    n_interactions: int = Field(description="interactions in this request")
    solved_again: list[str] = Field(description="earlier batches solved again without the re-edited items' rows "
                                                "(the batches that taught them, and those above)")
    warnings: list[str]


def _route(request: Request) -> str:
    """The route template (``/items/{item_id}``), so that metrics do not grow with every id requested."""
    return getattr(request.scope.get("route"), "path", None) or "<unmatched>"


def create_app(service: LiveService) -> FastAPI:
    """The app over an opened service; closing the app (lifespan end) closes the service. Reads the API key here
    (``serving.access.load_api_key``)."""
    auth = ApiKeyCheck(load_api_key(service.cfg.api_key_file), service.cfg.insecure_no_auth)
    mutating = [Depends(auth)]
    RecommendRequest = _recommend_request(service.decode.beam, service.decode.k)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="GenRecEdit live recommender", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="A generative recommender (TIGER) that learns new items in seconds with GenRecEdit, "
                              "without retraining or restart. " + (__doc__ or "").split("\n\n")[1])
    app.state.service = service
    app.state.auth = auth
    mount_offline_docs(app)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        service.metrics.observe_request(f"{request.method} {_route(request)}", response.status_code,
                                        time.perf_counter() - start)
        return response

    app.add_middleware(BodySizeLimit, limit=service.cfg.max_body_bytes)  # outermost: before anything reads

    @app.exception_handler(GenRecEditError)
    async def domain_error(request: Request, err: GenRecEditError):
        return JSONResponse({"detail": str(err), "error": type(err).__name__}, status_code=http_status(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        name = "PayloadTooLargeError" if err.status_code == 413 else \
            http.HTTPStatus(err.status_code).phrase.replace(" ", "")
        return JSONResponse({"detail": err.detail, "error": name}, status_code=err.status_code,
                            headers=getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        errors = err.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            ctx = errors[0].get("ctx", {})
            return JSONResponse({"detail": f"malformed JSON: {ctx.get('error', 'cannot parse the body')}",
                                 "error": "MalformedJSON"}, status_code=400)
        if any(tuple(e["loc"]) == ("body",) and isinstance(e.get("input"), (bytes, str)) for e in errors):
            return JSONResponse({"detail": "the body is not JSON; send a JSON object with "
                                           "Content-Type: application/json", "error": "MalformedJSON"},
                                status_code=400)
        parts = [f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors]
        return JSONResponse({"detail": "; ".join(parts), "error": "ValidationError"}, status_code=422)

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(body: RecommendRequest) -> dict:
        """Top-k items for one user's history, each with its title, text and the item file's fields. Concurrent
        requests are decoded together (micro-batching); each is answered wholly by the model that was serving when
        it arrived. 422 names unknown item ids."""
        return service.recommend(body.history, body.k, body.exclude_seen)

    @app.post("/items", status_code=202, dependencies=mutating,
              responses={202: {"model": JobOut, "description": "the job (queued, or the one this key names)"},
                         200: {"model": AddItemsResponse, "description": "with ?wait=true: the batch is serving"}})
    def add_items(body: AddItemsRequest,
                  idempotency_key: str | None = Header(
                      None, alias="Idempotency-Key", description="makes retries safe: the same key and items "
                      "return the same job; the same key with other items: 409. Drawn by the service when absent."),
                  wait: bool = Query(False, description="block until the job has finished and answer its result "
                                                        "(200) or its error (its status)")) -> JSONResponse:
        """Add a batch of new items as a job: embed their text, give them SIDs from the frozen tokenizer, add them
        to the trie, build pseudo-histories from similar warm items and apply GenRecEdit, off the request path.
        Answers 202 with the job at once (``GET /jobs/{job_id}`` follows it); its result holds each item's SID, its
        rank for one of its pseudo-histories, and its exposure on validation histories (``status`` and
        ``warnings`` flag an item that reaches no one or too many). The batch is validated before anything is
        recorded: a 4xx writes nothing."""
        job, created = service.submit_add([NewItem(i.item_id, i.text) for i in body.items], idempotency_key)
        headers = {"Location": f"/jobs/{job['job_id']}", "Idempotent-Replayed": "false" if created else "true"}
        if not wait:
            return JSONResponse(job, status_code=202, headers=headers)
        job = service.wait_job(job["job_id"])
        if job["state"] == "failed":
            error = job["error"]
            return JSONResponse({"detail": error["detail"], "error": error["error"], "job_id": job["job_id"]},
                                status_code=error["status_code"], headers=headers)
        return JSONResponse(job["result"], status_code=200, headers=headers)

    @app.post("/feedback", dependencies=mutating, response_model=FeedbackResponse)
    def add_feedback(body: FeedbackRequest) -> dict:
        """Re-edit added items from their first interactions: each item's text-only edit is replaced by an edit from
        every interaction the service holds for it (exact replacement: the batches that taught it are solved again
        without its rows, and one feedback batch teaches it on top). Blocks until the feedback batch is serving;
        ``DELETE /edits/{batch_id}`` rolls it back (the items get their earlier edit back). Validated before
        anything is recorded: a 4xx writes nothing."""
        return service.add_feedback([Interaction(i.item_id, tuple(i.history)) for i in body.interactions])

    @app.get("/jobs/{job_id}", response_model=JobOut)
    def get_job(job_id: str) -> dict:
        """An add job: its state (queued, running, succeeded, failed), timings, and its result or error. Jobs are
        kept in the registry, so a restarted service answers for finished ones; a job that was queued or running
        when the service stopped is failed."""
        return service.job(job_id)

    @app.get("/items/{item_id}")
    def get_item(item_id: str) -> dict:
        """An item of the catalog: SID, title, text, fields, warm (seen in training) and the batch that added it
        (null: the run's own catalog)."""
        item = service.item(item_id)
        if item is None:
            return JSONResponse({"detail": f"item {item_id!r} is not in the catalog", "error": "UnknownItemError"},
                                status_code=404)
        return item

    @app.get("/edits")
    def list_edits() -> dict:
        """Every batch in the registry, oldest first: kind (items, feedback), status (pending, active, rolled_back,
        failed), items (a feedback batch: those it re-edits), timings and the edit report."""
        snap = service.snapshot
        return {"active": snap.active_batches, "model_version": snap.version,
                "batches": [r.to_dict() for r in service.registry.records()]}

    @app.get("/edits/{batch_id}")
    def get_edit(batch_id: str) -> dict:
        records = service.registry.records(batch_id)
        if not records:
            raise UnknownBatchError(f"no batch {batch_id!r}")
        return records[0].to_dict()

    @app.delete("/edits/{batch_id}", dependencies=mutating)
    def roll_back(batch_id: str) -> dict:
        """Roll an active batch back. The newest item batch: exact (outputs equal those before it was added).
        Otherwise the batches from the lowest one whose requests change are solved again, in order, on the remaining
        stack (takes as long as editing them): the later batches of an older item batch; for a feedback batch, the
        batches that taught its items before (the items get their earlier edit back). 409 for an item batch whose
        items active feedback re-edits: roll the feedback back first."""
        return service.roll_back(batch_id)

    @app.get("/health")
    def health() -> dict:
        return service.health()

    @app.get("/metrics")
    def metrics() -> dict:
        """Request counts and p50/p99 latency per route, micro-batch sizes, and the time of every edit."""
        return service.metrics.to_dict()

    return app


def serve(run_dir: Path, host: str = "127.0.0.1", port: int = 8000, state_dir: Path | None = None,
          overrides: list[str] | None = None, log_level: str = "info", api_key_file: Path | None = None,
          insecure_no_auth: bool = False, registry_url: str | None = None, exposure_cap: float | None = None,
          text_edits: bool | None = None) -> None:
    """Load the run, restore the registry's state, and serve until interrupted (loopback by default);
    ``exposure_cap`` and ``text_edits``: ``ServiceConfig``'s."""
    import uvicorn

    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of the edit stages would flood a server's log
    cfg = ServiceConfig(state_dir=state_dir, api_key_file=api_key_file, insecure_no_auth=insecure_no_auth,
                        registry_url=registry_url, exposure_cap=exposure_cap, text_edits=text_edits)
    service = LiveService.open(run_dir, cfg, overrides)
    app = create_app(service)
    if app.state.auth.insecure_no_auth and not app.state.auth.configured:
        log.warning("no API key and --insecure-no-auth: anyone who reaches %s:%d can add and roll back items",
                    host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
