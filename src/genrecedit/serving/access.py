"""Who may change the service and how much a request may send: the API key of mutating endpoints, the hard body
size limit, and the interactive docs served from a pinned local copy of Swagger UI (no network).

API key: ``ServiceConfig.api_key_file`` (a file holding the key) or else the environment variable
``GENRECEDIT_API_KEY``. Every endpoint that changes state requires it in the ``X-API-Key`` header (compared in
constant time; 401 when missing or wrong). With no key configured those endpoints answer 403 with how to configure
one, unless ``ServiceConfig.insecure_no_auth`` (``genrecedit serve --insecure-no-auth``) opens them for local
development. The key is never logged or echoed.

Body limit: ``BodySizeLimit`` is an ASGI middleware that answers 413 at once for a declared ``Content-Length``
above the limit, and otherwise counts the bytes the application receives (chunked bodies included) and answers 413
as soon as the count crosses the limit, without reading the rest.
"""
from __future__ import annotations

import hmac
import json
import os
from pathlib import Path

from fastapi import FastAPI, Header, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles

from genrecedit.errors import ConfigError

API_KEY_ENV = "GENRECEDIT_API_KEY"
API_KEY_HEADER = "X-API-Key"
MIN_KEY_CHARS = 16
DOCS_STATIC = "/docs-static"
HOW_TO_CONFIGURE = (f"set the environment variable {API_KEY_ENV} (at least {MIN_KEY_CHARS} characters) or "
                    "ServiceConfig.api_key_file (`genrecedit serve --api-key-file PATH`) and send the key in the "
                    f"{API_KEY_HEADER} header; for local development only, `genrecedit serve --insecure-no-auth`")


def load_api_key(key_file: Path | None) -> str | None:
    """The configured key: the file's content (stripped) when ``key_file`` is set, else ``$GENRECEDIT_API_KEY``;
    None when neither is set. ``ConfigError`` for an unreadable file or a key shorter than ``MIN_KEY_CHARS``."""
    if key_file is not None:
        try:
            key, source = Path(key_file).read_text().strip(), str(key_file)
        except OSError as err:
            raise ConfigError(f"cannot read the API key file {key_file}: {err.strerror}") from err
    else:
        key, source = os.environ.get(API_KEY_ENV, "").strip(), f"${API_KEY_ENV}"
        if not key:
            return None
    if len(key) < MIN_KEY_CHARS or any(not c.isprintable() or c.isspace() for c in key):
        raise ConfigError(f"the API key in {source} must be at least {MIN_KEY_CHARS} printable characters "
                          "without spaces")
    return key


class ApiKeyCheck:
    """A FastAPI dependency: ``Depends(ApiKeyCheck(key, insecure))`` on every mutating route."""

    def __init__(self, key: str | None, insecure_no_auth: bool) -> None:
        self._key = None if key is None else key.encode()
        self.insecure_no_auth = insecure_no_auth

    @property
    def configured(self) -> bool:
        return self._key is not None

    def __repr__(self) -> str:  # never shows the key
        return f"ApiKeyCheck(configured={self._key is not None}, insecure_no_auth={self.insecure_no_auth})"

    def __call__(self, x_api_key: str | None = Header(None, alias=API_KEY_HEADER,
                                                      description="the service's API key")) -> None:
        if self._key is None:
            if self.insecure_no_auth:
                return
            raise HTTPException(403, f"this endpoint changes the service and no API key is configured: "
                                     f"{HOW_TO_CONFIGURE}")
        if x_api_key is None:
            raise HTTPException(401, f"missing {API_KEY_HEADER} header: this endpoint changes the service",
                                headers={"WWW-Authenticate": API_KEY_HEADER})
        if not hmac.compare_digest(x_api_key.encode(), self._key):
            raise HTTPException(401, f"wrong {API_KEY_HEADER}", headers={"WWW-Authenticate": API_KEY_HEADER})


class _TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodySizeLimit:
    """ASGI middleware: at most ``limit`` body bytes per HTTP request, however they are sent."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, f"body of {int(declared)} bytes; at most {self.limit}")
            return
        received, crossed, started = 0, False, False

        async def counting_receive():
            nonlocal received, crossed
            if crossed:  # the application asks again after the limit: the request is over for it
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    crossed = True
                    raise _TooLarge(self.limit)
            return message

        async def guarded_send(message):
            nonlocal started
            if crossed:  # whatever the application answers to the truncated body, the answer is 413
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not crossed or started:
                raise
        if crossed and not started:
            await self._refuse(send, f"body larger than {self.limit} bytes; stopped reading at {received}")

    @staticmethod
    async def _refuse(send, detail: str) -> None:
        body = json.dumps({"detail": detail, "error": "PayloadTooLargeError"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def mount_offline_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the pinned ``swagger-ui-bundle`` package's files, served by this app."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_STATIC, StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - docs",
                                   swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_STATIC}/favicon-32x32.png")
