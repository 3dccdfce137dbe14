"""HTTP API over a ``LiveService`` (FastAPI; OpenAPI docs at ``/docs``). Started by ``genrecedit serve``.

Errors are JSON ``{"detail": message, "error": type}``: 400 malformed JSON; 404 unknown item or batch id in the
URL; 409 duplicate item id or a batch that is not active; 413 too many items / too long a text or history / too
large a body; 422 a missing or mistyped field, an empty text, an unknown item in a history, an item with no
pseudo-histories; 500 an edit that failed (the previous model keeps serving). Nothing is written for a 4xx.
"""
from __future__ import annotations

import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from genrecedit.errors import (ArtifactMismatchError, DuplicateItemError, EmptyInputError, GenRecEditError,
                               UnknownItemError)
from genrecedit.serving.service import (BatchNotActiveError, EditFailedError, LiveService, NewItem,
                                        PayloadTooLargeError, ServiceConfig, UnknownBatchError)

MAX_BODY_BYTES = 8 * 1024 * 1024
HTTP_STATUS: dict[type, int] = {
    UnknownItemError: 422, DuplicateItemError: 409, EmptyInputError: 422, PayloadTooLargeError: 413,
    UnknownBatchError: 404, BatchNotActiveError: 409, EditFailedError: 500, ArtifactMismatchError: 409,
    GenRecEditError: 422,
}


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[str] = Field(description="the user's item ids, oldest first; may be empty (a new user: the "
                                           "model answers a lone EOS input). Only the most recent "
                                           "split.max_history items are read.")
    k: int | None = Field(None, description="how many items (default decode.k, at most decode.beam)")


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="log-probability of the item's SID under the (edited) model")


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model_version: int = Field(description="which snapshot answered (increments with every add/rollback)")
    active_batches: int


class NewItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str = Field(description="new, unique id (not in the catalog)")
    text: str = Field(description="non-empty title/description; embedded with the run's text encoder")


class AddItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[NewItemIn]


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
    exposure_estimate: dict | None = Field(description="{cases: valid, n_histories, k, max_item_share}; null: no "
                                                       "estimate (exposure_cases 0 or no validation cases)")


def _status_for(err: GenRecEditError) -> int:
    return next(HTTP_STATUS[c] for c in type(err).__mro__ if c in HTTP_STATUS)


def _route(request: Request) -> str:
    """The route template (``/items/{item_id}``), so that metrics do not grow with every id requested."""
    return getattr(request.scope.get("route"), "path", None) or "<unmatched>"


def create_app(service: LiveService) -> FastAPI:
    """The app over an opened service; closing the app (lifespan end) closes the service."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="GenRecEdit live recommender", lifespan=lifespan,
                  description="A generative recommender (TIGER) that learns new items in seconds with GenRecEdit, "
                              "without retraining or restart. " + (__doc__ or "").split("\n\n")[1])
    app.state.service = service

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
            response = JSONResponse({"detail": f"body of {size} bytes; at most {MAX_BODY_BYTES}",
                                     "error": "PayloadTooLargeError"}, status_code=413)
        else:
            response = await call_next(request)
        service.metrics.observe_request(f"{request.method} {_route(request)}", response.status_code,
                                        time.perf_counter() - start)
        return response

    @app.exception_handler(GenRecEditError)
    async def domain_error(request: Request, err: GenRecEditError):
        return JSONResponse({"detail": str(err), "error": type(err).__name__}, status_code=_status_for(err))

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
        """Top-k items for one user's history. Concurrent requests are decoded together (micro-batching); each
        is answered wholly by the model that was serving when it arrived. 422 names unknown item ids."""
        return service.recommend(body.history, body.k)

    @app.post("/items", response_model=AddItemsResponse)
    def add_items(body: AddItemsRequest) -> dict:
        """Add a batch of new items: embed their text, give them SIDs from the frozen tokenizer, add them to the
        trie, build pseudo-histories from similar warm items and apply GenRecEdit, off the request path; returns
        once the batch is serving, with each item's SID, its rank for one of its pseudo-histories, and its
        exposure on validation histories (``status`` and ``warnings`` flag an item that reaches no one or too
        many)."""
        return service.add_items([NewItem(i.item_id, i.text) for i in body.items])

    @app.get("/items/{item_id}")
    def get_item(item_id: str) -> dict:
        """An item of the catalog: SID, text, warm (seen in training) and the batch that added it (null: the
        run's own catalog)."""
        item = service.item(item_id)
        if item is None:
            return JSONResponse({"detail": f"item {item_id!r} is not in the catalog", "error": "UnknownItemError"},
                                status_code=404)
        return item

    @app.get("/edits")
    def list_edits() -> dict:
        """Every item batch in the registry, oldest first: status (pending, active, rolled_back, failed), items,
        timings and the edit report."""
        snap = service.snapshot
        return {"active": snap.active_batches, "model_version": snap.version,
                "batches": [r.to_dict() for r in service.registry.records()]}

    @app.get("/edits/{batch_id}")
    def get_edit(batch_id: str) -> dict:
        records = service.registry.records(batch_id)
        if not records:
            raise UnknownBatchError(f"no batch {batch_id!r}")
        return records[0].to_dict()

    @app.delete("/edits/{batch_id}")
    def roll_back(batch_id: str) -> dict:
        """Roll an active batch back. The newest batch: exact (outputs equal those before it was added). An older
        one: the later batches are recomputed in order on the remaining stack (takes as long as editing them)."""
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
          overrides: list[str] | None = None, log_level: str = "info") -> None:
    """Load the run, restore the registry's state, and serve until interrupted (loopback by default)."""
    import uvicorn

    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of the edit stages would flood a server's log
    service = LiveService.open(run_dir, ServiceConfig(state_dir=state_dir), overrides)
    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level)
