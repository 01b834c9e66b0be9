"""The Request API's sign-in is throttled in the Request Network's own PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import httpx
import pytest

from importer.api import create_app as create_request_app
from netsync import passwords
from tests.factories import FAST, asgi_client
from tests.importer.conftest import MakeImporter
from tests.importer.files import publish, user_record
from tests.queries import fetch
from tests.support import Sandbox


@pytest.mark.usefixtures("no_refusal_floor")
async def test_request_api_sign_in_is_throttled_in_its_own_database_across_replicas(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    uid = uuid.uuid4()
    digest = passwords.hash_password_sync("request side phrase")
    publish(
        sandbox.exports,
        sandbox.signer,
        1,
        user_record(uid, 1, username="judy", password_hash=digest),
    )
    await make_importer().scan_once()
    settings = sandbox.request_settings(sign_in_account_limits=FAST)
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(asgi_client(create_request_app(settings)))
        b = await stack.enter_async_context(asgi_client(create_request_app(settings)))

        async def attempt(client: httpx.AsyncClient, name: str, password: str) -> int:
            body = {"username": name, "password": password}
            return (await client.post("/api/v1/auth/login", json=body)).status_code

        for name in ("judy", "unknown-user"):
            codes = [await attempt(c, name, "wrong") for c in (a, b, a, b)]
            assert codes == [401, 401, 401, 429], (name, codes)
        rows = await fetch(sandbox.services.request_url, "SELECT key FROM sign_in_throttle")
        assert rows  # the counters live in the Request database, shared by both replicas
        await asyncio.sleep(2.1)
        assert await attempt(a, "judy", "request side phrase") == 200


@pytest.mark.usefixtures("no_refusal_floor")
async def test_the_request_api_lifts_a_lock_for_administrators_not_the_service_token(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    digest = passwords.hash_password_sync("request side phrase 2")
    admin_digest = passwords.hash_password_sync("request admin phrase")
    publish(
        sandbox.exports,
        sandbox.signer,
        1,
        user_record(uuid.uuid4(), 1, username="nina", password_hash=digest),
        user_record(uuid.uuid4(), 1, username="radmin", password_hash=admin_digest, role="admin"),
    )
    await make_importer().scan_once()
    service = "service-token-for-sign-in-" + "s" * 20
    settings = sandbox.request_settings(sign_in_account_limits=FAST, request_service_token=service)
    async with asgi_client(create_request_app(settings)) as client:
        body = {"username": "nina", "password": "wrong"}
        for _ in range(3):
            await client.post("/api/v1/auth/login", json=body)
        good = {"username": "nina", "password": "request side phrase 2"}
        assert (await client.post("/api/v1/auth/login", json=good)).status_code == 429
        # the service token is read-only: it may not undo the throttle
        refused = await client.delete(
            "/api/v1/auth/locks/NINA", headers={"Authorization": f"Bearer {service}"}
        )
        assert refused.status_code == 403
        admin = {"username": "radmin", "password": "request admin phrase"}
        signed_in = await client.post("/api/v1/auth/login", json=admin)
        assert signed_in.status_code == 200, signed_in.text
        admin_token = signed_in.json()["access_token"]
        lifted = await client.delete(
            "/api/v1/auth/locks/NINA", headers={"Authorization": f"Bearer {admin_token}"}
        )
        assert lifted.status_code == 204
        assert (await client.post("/api/v1/auth/login", json=good)).status_code == 200
