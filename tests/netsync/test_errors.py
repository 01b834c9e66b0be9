"""The answer when the database goes away mid-request: 503 with ``Retry-After`` and the usual
typed body, never a 500 and never the driver's text (which can quote a row); any other
database error is still a 500 with its traceback in the log."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import IntegrityError, InterfaceError

from netsync.errors import install_error_handlers


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/refused")
    async def refused() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    @app.get("/closed")
    async def closed() -> None:
        cause = asyncpg.InterfaceError(
            "cannot call PreparedStatement.fetch(): the underlying connection is closed"
        )
        raise InterfaceError("SELECT secret_row", {}, cause) from cause

    @app.get("/shutdown")
    async def shutdown() -> None:
        raise asyncpg.exceptions.AdminShutdownError("terminating connection: row 42 says hi")

    @app.get("/integrity")
    async def integrity() -> None:
        raise IntegrityError("INSERT", {}, Exception("duplicate key (alice)"))

    return app


@pytest.mark.parametrize("path", ["/refused", "/closed", "/shutdown"])
async def test_a_database_that_went_away_is_a_503_to_retry(path: str) -> None:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(path)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"] == "service_unavailable"
    assert "row" not in response.text
    assert "secret" not in response.text


async def test_any_other_database_error_is_still_a_500_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/integrity")
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "detail": "internal server error"}
    assert "alice" not in response.text
    assert any(r.message == "unhandled error" for r in caplog.records)
