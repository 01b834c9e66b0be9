"""The Request API as its users see it: sign in with the synced hash (argon2id or legacy bcrypt),
read synced users (never a hash), settings and profile types page by page, and the state of the
sync; every refusal is a typed 4xx body."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import bcrypt
import httpx
import pytest
from asgi_lifespan import LifespanManager

from importer.api import create_app
from importer.config import RequestSettings
from netsync.config import ConfigurationError
from netsync.passwords import hash_password_sync
from tests.importer.conftest import MakeImporter
from tests.importer.files import publish, setting_record, user_record
from tests.support import Sandbox

SERVICE = "service-token-for-tests-" + "x" * 20
ADMIN, ALICE, BOB, CAROL, DAVE = (uuid.uuid4() for _ in range(5))


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    return {
        "argon": hash_password_sync("admin pass phrase"),
        "alice": hash_password_sync("alice pass phrase"),
        "bcrypt": bcrypt.hashpw(b"legacy pass phrase", bcrypt.gensalt(4)).decode(),
    }


@pytest.fixture
async def client(
    sandbox: Sandbox, make_importer: MakeImporter, hashes: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    users = [
        user_record(ADMIN, 1, username="root", password_hash=hashes["argon"], role="admin"),
        user_record(ALICE, 1, username="alice", password_hash=hashes["alice"]),
        user_record(BOB, 1, username="bob", password_hash=hashes["bcrypt"]),
        user_record(CAROL, 1, username="carol", password_hash=hashes["alice"], active=False),
        user_record(DAVE, 2, op="delete"),
    ]
    settings = [setting_record(f"site.option_{i}", {"n": i}) for i in range(7)]
    gone = setting_record("site.gone", 1, version=2, op="delete")
    del gone["data"]
    publish(sandbox.exports, sandbox.signer, 1, *users, *settings, gone)
    publish(sandbox.exports, sandbox.signer, 3, user_record(uuid.uuid4(), 1, username="zed"))
    (sandbox.exports / "changes-000000000009.jsonl").write_bytes(b"garbage\n")
    await make_importer().scan_once()  # seq 2 is missing: a gap

    app = create_app(sandbox.request_settings(request_service_token=SERVICE))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://request") as c:
            yield c


async def login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )


async def bearer(client: httpx.AsyncClient, username: str, password: str) -> dict[str, str]:
    response = await login(client, username, password)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


SERVICE_HEADERS = {"Authorization": f"Bearer {SERVICE}"}


async def test_sign_in_with_argon2id_and_legacy_bcrypt_but_not_when_inactive_or_deleted(
    client: httpx.AsyncClient,
) -> None:
    assert (await login(client, "root", "admin pass phrase")).status_code == 200
    assert (await login(client, "BOB", "legacy pass phrase")).status_code == 200
    for username, password in (
        ("bob", "wrong pass phrase"),
        ("carol", "alice pass phrase"),  # deactivated
        ("nobody", "alice pass phrase"),
    ):
        response = await login(client, username, password)
        assert response.status_code == 401
        assert response.json() == {
            "error": "not_authenticated",
            "detail": "invalid username or password",
        }


async def test_read_endpoints_need_a_token_and_never_show_a_hash(
    client: httpx.AsyncClient, hashes: dict[str, str]
) -> None:
    for path in (
        "/api/v1/users",
        "/api/v1/settings",
        "/api/v1/profile-types",
        "/api/v1/sync/status",
    ):
        anonymous = await client.get(path)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"] == "not_authenticated"
        forged = await client.get(path, headers={"Authorization": "Bearer not-a-token"})
        assert forged.status_code == 401

    admin = await bearer(client, "root", "admin pass phrase")
    users = await client.get("/api/v1/users", headers=admin)
    assert users.status_code == 200
    body = users.json()
    assert [u["username"] for u in body["items"]] == ["alice", "bob", "carol", "root", "zed"]
    assert body["total"] == 5  # the deleted user is not listed
    for secret in hashes.values():
        assert secret not in users.text
    assert "password_hash" not in users.text

    alice = await bearer(client, "alice", "alice pass phrase")
    assert (await client.get("/api/v1/users", headers=alice)).status_code == 403
    me = await client.get("/api/v1/users/me", headers=alice)
    assert me.json()["username"] == "alice"
    assert (await client.get(f"/api/v1/users/{BOB}", headers=alice)).status_code == 403
    deleted = await client.get(f"/api/v1/users/{DAVE}", headers=SERVICE_HEADERS)
    assert deleted.status_code == 404
    assert deleted.json()["error"] == "not_found"
    assert (await client.get("/api/v1/profile-types", headers=alice)).json()["total"] == 0


async def test_settings_page_by_page_without_tombstones(client: httpx.AsyncClient) -> None:
    headers = await bearer(client, "alice", "alice pass phrase")
    page = await client.get("/api/v1/settings?limit=3&offset=3", headers=headers)
    assert page.status_code == 200
    body: dict[str, Any] = page.json()
    assert (body["total"], body["limit"], body["offset"]) == (7, 3, 3)
    assert [s["key"] for s in body["items"]] == [f"site.option_{i}" for i in (3, 4, 5)]
    assert body["items"][0]["value"] == {"n": 3}
    one = await client.get("/api/v1/settings/site.option_6", headers=headers)
    assert one.json()["value"] == {"n": 6}
    gone = await client.get("/api/v1/settings/site.gone", headers=headers)
    assert gone.status_code == 404
    for query in ("limit=0", "limit=501", "offset=-1", "offset=99999999999999999999", "limit=x"):
        bad = await client.get(f"/api/v1/settings?{query}", headers=headers)
        assert bad.status_code == 422, query
        assert bad.json()["error"] == "invalid_input"


async def test_a_token_dies_with_a_new_password_or_deactivation(
    client: httpx.AsyncClient, sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    alice = await bearer(client, "alice", "alice pass phrase")
    bob = await bearer(client, "bob", "legacy pass phrase")
    new_hash = hash_password_sync("alice new phrase")
    publish(
        sandbox.exports,
        sandbox.signer,
        2,
        user_record(ALICE, 2, username="alice", password_hash=new_hash),
        user_record(BOB, 2, username="bob", active=False),
    )
    await make_importer().scan_once()
    for headers in (alice, bob):
        response = await client.get("/api/v1/users/me", headers=headers)
        assert response.status_code == 401
    assert (await login(client, "alice", "alice new phrase")).status_code == 200
    assert (await login(client, "bob", "legacy pass phrase")).status_code == 401


async def test_sync_status_and_quarantine_for_operators(client: httpx.AsyncClient) -> None:
    alice = await bearer(client, "alice", "alice pass phrase")
    assert (await client.get("/api/v1/sync/status", headers=alice)).status_code == 403
    status = await client.get("/api/v1/sync/status", headers=SERVICE_HEADERS)
    assert status.status_code == 200
    body = status.json()
    [stream] = body["streams"]
    assert (stream["stream"], stream["last_applied_seq"], stream["files_applied"]) == (
        "changes",
        3,
        2,
    )
    assert 0 <= stream["lag_s"] < 60
    assert [(g["first_seq"], g["last_seq"]) for g in body["open_gaps"]] == [(2, 2)]
    assert body["missing_files"] == 1
    assert body["files_quarantined"] == 1

    listing = await client.get("/api/v1/sync/quarantine?limit=10", headers=SERVICE_HEADERS)
    assert listing.status_code == 200
    [entry] = listing.json()["items"]
    assert (entry["file_name"], entry["reason"]) == ("changes-000000000009.jsonl", "truncated")
    none = await client.get("/api/v1/sync/quarantine?reason=symlink", headers=SERVICE_HEADERS)
    assert none.json()["total"] == 0


def test_outside_development_placeholder_secrets_refuse_to_start() -> None:
    prod: dict[str, Any] = {"_env_file": None, "env": "production"}
    with pytest.raises(ConfigurationError, match="NETSYNC_REQUEST_SECRET_KEY"):
        RequestSettings(**prod, request_secret_key="changeme").token_secret()
    with pytest.raises(ConfigurationError, match="NETSYNC_REQUEST_SECRET_KEY"):
        RequestSettings(**prod).token_secret()
    with pytest.raises(ConfigurationError, match="NETSYNC_REQUEST_SERVICE_TOKEN"):
        RequestSettings(**prod, request_service_token="secret").service_token()
    good = RequestSettings(**prod, request_secret_key="k" * 40, request_service_token="t" * 40)
    assert good.token_secret() == "k" * 40
    assert good.service_token() == "t" * 40


async def test_nul_bytes_and_lone_surrogates_are_a_typed_422_never_a_500(
    client: httpx.AsyncClient,
) -> None:
    # Before: PostgreSQL refused the NUL character in the query and the API answered 500.
    for body in (
        {"username": "ali\x00ce", "password": "alice pass phrase"},
        {"username": "alice", "password": "alice\x00 pass phrase"},
    ):
        response = await login(client, body["username"], body["password"])
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid_input"
    for path in ("/api/v1/settings/site.%00option", "/api/v1/sync/quarantine?reason=%00"):
        response = await client.get(path, headers=SERVICE_HEADERS)
        assert response.status_code == 422, (path, response.text)
        assert "error" in response.json()
