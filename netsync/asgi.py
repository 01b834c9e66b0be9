"""ASGI pieces both APIs share: the correlation id, request metrics and the access log.

Both are pure ASGI middlewares rather than ``BaseHTTPMiddleware``: they run in the request's own
task (so the correlation id context variable reaches the endpoint, its dependencies and the
outbox row they write), add no extra task or body buffering per request, and see the status even
when the endpoint raises.

Requests are labelled by their route *template* (``/api/v1/users/{user_id}``), read from the
scope after routing, never by the raw path: one label value per route, however many ids exist.
"""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from netsync import metrics
from netsync.logging import correlation_id

log = logging.getLogger("netsync.access")

REQUEST_ID_HEADER = b"x-request-id"
UNMATCHED = "<unmatched>"
#: Probe and scrape endpoints are logged at DEBUG: they would drown every other line.
_QUIET = frozenset({"/health", "/ready", "/metrics"})


def _valid_request_id(raw: bytes) -> str | None:
    try:
        value = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return value if 0 < len(value) <= 128 and value.isprintable() else None


class CorrelationIdMiddleware:
    """Take the caller's ``X-Request-ID`` (or make one), expose it to logs and the outbox, and
    send it back on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"")
        cid = _valid_request_id(incoming) or uuid.uuid4().hex
        header = (REQUEST_ID_HEADER, cid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != REQUEST_ID_HEADER]
                message["headers"] = [*headers, header]
            await send(message)

        token = correlation_id.set(cid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            correlation_id.reset(token)


class MetricsMiddleware:
    """Count requests and time them by route template and status; write one access log line."""

    def __init__(self, app: ASGIApp, *, app_name: str) -> None:
        self.app = app
        self.app_name = app_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before starting a response

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope["method"]
            metrics.HTTP_REQUESTS.labels(self.app_name, method, route, str(status)).inc()
            metrics.HTTP_DURATION.labels(self.app_name, method, route).observe(elapsed)
            log.log(
                logging.DEBUG if route in _QUIET else logging.INFO,
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )


async def metrics_endpoint(_: Request) -> Response:
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)


def instrument(app: FastAPI, app_name: str) -> None:
    """Add ``/metrics``, request metrics and the correlation id to an API.

    The correlation middleware is added last, so it is the outer one: the access log line
    written by the metrics middleware carries the request's id.
    """
    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    app.add_middleware(MetricsMiddleware, app_name=app_name)
    app.add_middleware(CorrelationIdMiddleware)
