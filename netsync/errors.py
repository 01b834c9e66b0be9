"""One exception hierarchy and one handler for both APIs.

Every error leaves as ``{"error": <stable code>, "detail": <human text or field list>}`` with a
4xx status for anything the caller can fix. Route code raises these exceptions; it never builds
``HTTPException`` responses by hand. Unexpected exceptions become a 500 with no internals in the
body (the traceback goes to the log only).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    detail: str | list[FieldError]


class NetsyncError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class NotAuthenticated(NetsyncError):
    status_code = 401
    code = "not_authenticated"

    def __init__(self, detail: str = "authentication required") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class NotPermitted(NetsyncError):
    status_code = 403
    code = "not_permitted"


class NotFound(NetsyncError):
    status_code = 404
    code = "not_found"


class AlreadyExists(NetsyncError):
    status_code = 409
    code = "already_exists"


class Conflict(NetsyncError):
    status_code = 409
    code = "conflict"


class InvalidInput(NetsyncError):
    status_code = 422
    code = "invalid_input"


class ServiceUnavailable(NetsyncError):
    status_code = 503
    code = "service_unavailable"


_STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "not_permitted",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
}

#: For ``responses=`` on routers, so every error status is documented in the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": code.replace("_", " ")}
    for status, code in _STATUS_CODES.items()
    if status in (400, 401, 403, 404, 409, 422)
}


#: asyncpg's errors that say the server, not the statement, is the problem: connection lost
#: (class 08), server shutting down or starting (57P01-57P03), no host taking writes.
_UNAVAILABLE = (
    ConnectionError,  # refused, reset: raised bare by asyncpg's connect
    TimeoutError,  # a host that does not answer: asyncpg's connect gives up
    socket.gaierror,  # a host name that does not resolve (yet), as during a failover
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


#: The classes whose handler asks ``database_unavailable`` (every class above is one of them).
_DATABASE_ERRORS = (
    DBAPIError,
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` is the database going away (a connection lost or refused, a failover
    under way) rather than anything about the request: an answer of 503 with ``Retry-After``,
    not 500. The error's own text is never shown: it can quote a row."""
    seen: BaseException | None = exc
    for _ in range(5):  # the error, SQLAlchemy's wrapper, its cause
        if seen is None:
            return False
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, _UNAVAILABLE):
            return True
        if isinstance(seen, asyncpg.InterfaceError) and "connection is closed" in str(seen):
            return True
        orig = getattr(seen, "orig", None)
        seen = orig if isinstance(orig, BaseException) else seen.__cause__
    return False


def _body(code: str, detail: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NetsyncError)
    async def _netsync(_: Request, exc: NetsyncError) -> JSONResponse:
        return JSONResponse(
            _body(exc.code, exc.detail), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {
                "loc": [str(p) if not isinstance(p, int) else p for p in err.get("loc", ())],
                "msg": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
            for err in exc.errors()
        ]
        return JSONResponse(_body("invalid_input", fields), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return JSONResponse(
            _body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def _database(_: Request, exc: Exception) -> JSONResponse:
        if not database_unavailable(exc):
            raise exc  # a fault of ours after all: the handler below answers 500
        # the request was fine; the database is restarting, failing over or unreachable
        log.warning("database unavailable", extra={"error": type(exc).__name__})
        return JSONResponse(
            _body("service_unavailable", "the database is unavailable; try again shortly"),
            status_code=503,
            headers={"Retry-After": "1"},
        )

    # Handlers by class run inside the app, so the answer is the whole story; the catch-all
    # for Exception runs outermost, where Starlette re-raises after answering.
    for kind in _DATABASE_ERRORS:
        app.add_exception_handler(kind, _database)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(_body("internal_error", "internal server error"), status_code=500)
