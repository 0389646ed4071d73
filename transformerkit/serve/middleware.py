"""What every request passes before it reaches a route, as plain ASGI wrappers: timing for /metrics, the body
size limit (413) and the API key (401). Each answers with an OpenAI-style error body."""

from __future__ import annotations

import hmac
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body
from .metrics import Metrics


class RequestMetrics:
    """Times each request from its arrival to its response's last byte (a stream's too) and counts its status."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.observe(scope["path"], scope["method"], status, time.perf_counter() - start)


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413, whether it says its length or streams it in chunks,
    before any of it is parsed. The body is read here once and replayed to the route."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the client's disconnect, which streams listen for
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = error_body(f"the request body is larger than this server's limit of {self.limit} bytes",
                          code="request_too_large")
        await JSONResponse(body, status_code=413)(scope, receive, send)


class ApiKey:
    """With --api-key, every /v1 route and /metrics wants `Authorization: Bearer KEY`; the page and /health
    stay open (the page asks for the key when the API refuses it)."""

    def __init__(self, app: ASGIApp, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] == "http" and (scope["path"].startswith("/v1/") or scope["path"] == "/metrics")
        if guarded and not hmac.compare_digest(dict(scope["headers"]).get(b"authorization", b""), self.expected):
            body = error_body("a valid API key is required: send the header 'Authorization: Bearer KEY'",
                              code="invalid_api_key")
            return await JSONResponse(body, status_code=401)(scope, receive, send)
        await self.app(scope, receive, send)
