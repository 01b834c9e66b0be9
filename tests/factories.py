"""Small typed helpers that create what a test needs through the real API."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import bcrypt
import httpx
import orjson
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pydantic import SecretStr

from app.bootstrap import ensure_admin
from app.config import ResponseSettings

ADMIN_PASSWORD = "bootstrap secret for tests"


async def admin_headers(api: httpx.AsyncClient, settings: ResponseSettings) -> dict[str, str]:
    await ensure_admin(settings.model_copy(update={"admin_password": SecretStr(ADMIN_PASSWORD)}))
    return await login(api, "admin", ADMIN_PASSWORD)


async def login(api: httpx.AsyncClient, username: str, password: str) -> dict[str, str]:
    response = await api.post(
        "/api/v1/auth/token", data={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def create_user(
    api: httpx.AsyncClient,
    headers: dict[str, str],
    username: str,
    password: str = "initial password 1",
    **extra: Any,
) -> dict[str, Any]:
    response = await api.post(
        "/api/v1/users",
        json={"username": username, "password": password, **extra},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


#: bcrypt at cost 4 (the old system's were 12: same format, fewer rounds for the test's sake).
PASSWORDS = [f"imported pass phrase {i}" for i in range(8)]
HASHES = [bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode() for p in PASSWORDS]


FAST = "3/2 seconds"  # a sign-in window a test can wait out


@contextlib.asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("203.0.113.7", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


def legacy_rows(n: int, *, prefix: str = "old") -> bytes:
    """``n`` users of the previous deployment as NDJSON, each with a bcrypt hash of
    ``PASSWORDS``."""
    return b"".join(
        orjson.dumps(
            {
                "username": f"{prefix}{i:05d}",
                "email": f"{prefix}{i:05d}@example.org",
                "password_hash": HASHES[i % len(HASHES)],
            }
        )
        + b"\n"
        for i in range(n)
    )


async def import_users(
    api: httpx.AsyncClient, headers: dict[str, str], body: bytes, **params: str
) -> httpx.Response:
    """``POST /api/v1/users/import`` of an NDJSON body."""
    return await api.post(
        "/api/v1/users/import",
        content=body,
        params=params,
        headers={**headers, "Content-Type": "application/x-ndjson"},
        timeout=120,
    )
