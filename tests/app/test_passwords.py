"""Password changes through the Response API, end to end to the Request database, in-process:
the real app, arq's real Worker and the importer's real loop, on real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
from arq.worker import Worker
from asgi_lifespan import LifespanManager

from importer.api import create_app as create_request_app
from importer.daemon.loop import Importer
from netsync.config import to_libpq_url
from tests.factories import admin_headers, create_user, login
from tests.support import Sandbox, eventually


async def synced(sandbox: Sandbox, username: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(to_libpq_url(sandbox.services.request_url))
    try:
        return await conn.fetchrow(
            "SELECT version, password_hash, is_active FROM synced_users WHERE username = $1",
            username,
        )
    finally:
        await conn.close()


async def response_user(sandbox: Sandbox, username: str) -> asyncpg.Record:
    conn = await asyncpg.connect(to_libpq_url(sandbox.services.response_url))
    try:
        row = await conn.fetchrow(
            "SELECT id, version, password_hash FROM users WHERE username = $1", username
        )
        assert row is not None
        return row
    finally:
        await conn.close()


async def request_login(sandbox: Sandbox, username: str, password: str) -> int:
    app = create_request_app(sandbox.request_settings())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://request") as client:
            response = await client.post(
                "/api/v1/auth/login", json={"username": username, "password": password}
            )
            return response.status_code


async def test_a_reset_password_signs_in_on_the_request_network(
    api: httpx.AsyncClient, sandbox: Sandbox, worker: Worker, importer: Importer
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    alice = await create_user(api, admin, "alice")

    response = await api.post(
        f"/api/v1/users/{alice['id']}/reset-password",
        json={"new_password": "a brand new secret 42"},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["sync_job_id"].startswith("sync:")

    async def arrived() -> bool:
        row = await synced(sandbox, "alice")
        return row is not None and row["version"] == 2

    await eventually(arrived)
    assert await request_login(sandbox, "alice", "a brand new secret 42") == 200
    assert await request_login(sandbox, "alice", "initial password 1") == 401

    job = await api.get(f"/api/v1/jobs/{body['sync_job_id']}", headers=admin)
    assert job.status_code == 200
    assert job.json()["state"] == "complete"
    assert job.json()["result"]["stream"] == "changes"


async def test_users_change_their_own_password_and_old_tokens_stop_working(
    api: httpx.AsyncClient, sandbox: Sandbox, worker: Worker, importer: Importer
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    await create_user(api, admin, "bob", "first pass phrase")
    bob = await login(api, "bob", "first pass phrase")

    wrong = await api.post(
        "/api/v1/users/me/password",
        json={"current_password": "not my password", "new_password": "second pass phrase"},
        headers=bob,
    )
    assert wrong.status_code == 403
    assert wrong.json()["error"] == "not_permitted"

    ok = await api.post(
        "/api/v1/users/me/password",
        json={"current_password": "first pass phrase", "new_password": "second pass phrase"},
        headers=bob,
    )
    assert ok.status_code == 200, ok.text
    assert (await api.get("/api/v1/users/me", headers=bob)).status_code == 401
    await login(api, "bob", "second pass phrase")

    async def arrived() -> bool:
        row = await synced(sandbox, "bob")
        return row is not None and row["version"] == 2

    await eventually(arrived)
    assert await request_login(sandbox, "bob", "second pass phrase") == 200


async def test_only_admins_reset_passwords_and_anonymous_callers_get_401(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    carol = await create_user(api, admin, "carol")
    await create_user(api, admin, "dave", "password of d 123")
    dave = await login(api, "dave", "password of d 123")
    url = f"/api/v1/users/{carol['id']}/reset-password"

    anonymous = await api.post(url, json={"new_password": "whatever password 1"})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "not_authenticated"
    forbidden = await api.post(url, json={"new_password": "whatever password 1"}, headers=dave)
    assert forbidden.status_code == 403
    missing = await api.post(
        f"/api/v1/users/{uuid.uuid4()}/reset-password",
        json={"new_password": "whatever password 1"},
        headers=admin,
    )
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"


async def test_weak_passwords_get_clear_422_errors_and_change_nothing(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    erin = await create_user(api, admin, "erin")
    for weak, words in (
        ("short", "at least 12 characters"),
        ("erin-erin-erin-1", "must not contain the username"),
        ("aaaaaaaaaaaaaaaa", "5 different characters"),
    ):
        response = await api.post(
            f"/api/v1/users/{erin['id']}/reset-password",
            json={"new_password": weak},
            headers=admin,
        )
        assert response.status_code == 422
        assert response.json()["error"] == "weak_password"
        assert words in response.json()["detail"]
    malformed = await api.post(
        f"/api/v1/users/{erin['id']}/reset-password", json={"password": "x"}, headers=admin
    )
    assert malformed.status_code == 422
    assert malformed.json()["error"] == "invalid_input"
    assert (await response_user(sandbox, "erin"))["version"] == 1


async def test_50_concurrent_changes_for_5_users_end_with_the_last_accepted_one(
    api: httpx.AsyncClient, sandbox: Sandbox, worker: Worker, importer: Importer
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    users = [await create_user(api, admin, f"user{i}") for i in range(5)]

    async def change(n: int) -> None:
        user = users[n % 5]
        response = await api.post(
            f"/api/v1/users/{user['id']}/reset-password",
            json={"new_password": f"concurrent password {n:03d}"},
            headers=admin,
        )
        assert response.status_code == 200, response.text

    await asyncio.gather(*(change(n) for n in range(50)))

    for i in range(5):
        source = await response_user(sandbox, f"user{i}")
        assert source["version"] == 11  # created, then ten accepted changes

        async def caught_up(name: str = f"user{i}", want: int = source["version"]) -> bool:
            row = await synced(sandbox, name)
            return row is not None and row["version"] == want

        await eventually(caught_up)
        replica = await synced(sandbox, f"user{i}")
        assert replica is not None
        assert replica["password_hash"] == source["password_hash"]


async def test_a_change_made_while_redis_is_down_is_synced_by_the_sweeper(
    sandbox: Sandbox, worker: Worker, importer: Importer
) -> None:
    from app.main import create_app

    # An API whose Redis is unreachable: the change must still commit and be exported later.
    broken = sandbox.response_settings(redis_url="redis://127.0.0.1:1/0")
    app = create_app(broken)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://response") as api:
            admin = await admin_headers(api, broken)
            frank = await create_user(api, admin, "frank")
            response = await api.post(
                f"/api/v1/users/{frank['id']}/reset-password",
                json={"new_password": "changed during the outage"},
                headers=admin,
            )
            assert response.status_code == 200, response.text
            assert (await api.get("/ready")).status_code == 503

            async def arrived() -> bool:
                row = await synced(sandbox, "frank")
                return row is not None and row["version"] == 2

            await eventually(arrived, timeout=15)
            job = await api.get(f"/api/v1/jobs/{response.json()['sync_job_id']}", headers=admin)
            assert job.status_code == 200
            assert job.json()["state"] == "complete"
    assert await request_login(sandbox, "frank", "changed during the outage") == 200
