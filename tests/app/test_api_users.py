"""The users API through the real app and databases: listing, reading, updating, deactivating and
deleting, who may do what, and every change reaching the outbox (and the Request Network)."""

from __future__ import annotations

import uuid

import httpx
from arq.worker import Worker

from importer.daemon.loop import Importer
from tests.factories import admin_headers, create_user, login
from tests.queries import outbox, synced
from tests.support import Sandbox, eventually


async def make_profile_type(api: httpx.AsyncClient, admin: dict[str, str], name: str) -> str:
    response = await api.post(
        "/api/v1/profile-types", json={"name": name, "permissions": ["reports:read"]}, headers=admin
    )
    assert response.status_code == 201, response.text
    profile_type_id: str = response.json()["id"]
    return profile_type_id


async def test_admins_list_users_with_filters_and_pages(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    staff = await make_profile_type(api, admin, "Staff")
    alice = await create_user(api, admin, "alice", profile_type_id=staff)
    await create_user(api, admin, "malik", is_active=False)
    await create_user(api, admin, "bob_50")
    assert alice["profile_type_id"] == staff

    async def names(**params: object) -> list[str]:
        response = await api.get("/api/v1/users", params=params, headers=admin)  # type: ignore[arg-type]
        assert response.status_code == 200, response.text
        return [u["username"] for u in response.json()["items"]]

    assert await names() == ["admin", "alice", "bob_50", "malik"]
    assert await names(username="LI") == ["alice", "malik"]
    assert await names(username="%") == []  # a literal %, not a wildcard
    assert await names(username="_") == ["bob_50"]
    assert await names(is_active="false") == ["malik"]
    assert await names(profile_type_id=staff) == ["alice"]
    assert await names(role="admin") == ["admin"]
    page = (await api.get("/api/v1/users?limit=2&offset=1", headers=admin)).json()
    assert [u["username"] for u in page["items"]] == ["alice", "bob_50"]
    assert (page["total"], page["limit"], page["offset"]) == (4, 2, 1)
    assert all("password" not in key for u in page["items"] for key in u)

    for bad in (
        "limit=0",
        "limit=100000000000000000000000000",
        "offset=-1",
        "offset=1e400",
        "profile_type_id=nope",
        "is_active=maybe",
        "role=root",
        "username=%00",
    ):
        response = await api.get(f"/api/v1/users?{bad}", headers=admin)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"] == "invalid_input"


async def test_a_user_reads_and_changes_only_their_own_account(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    staff = await make_profile_type(api, admin, "Staff")
    carol = await create_user(api, admin, "carol", "secret of c. 1234")
    dave = await create_user(api, admin, "dave")
    me = await login(api, "carol", "secret of c. 1234")

    own = await api.get(f"/api/v1/users/{carol['id']}", headers=me)
    assert own.status_code == 200
    assert own.json()["username"] == "carol"

    changed = await api.patch(
        f"/api/v1/users/{carol['id']}", json={"email": "carol@example.org"}, headers=me
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["email"] == "carol@example.org"
    assert changed.json()["version"] == 2
    assert changed.json()["sync_job_id"].startswith("sync:")

    dave_url = f"/api/v1/users/{dave['id']}"
    for method, url, body in (
        ("GET", dave_url, None),
        ("PATCH", dave_url, {"email": "x@example.org"}),
        ("POST", f"{dave_url}/deactivate", None),
        ("DELETE", dave_url, None),
        ("POST", f"{dave_url}/reset-password", {"new_password": "a long new password"}),
        ("GET", "/api/v1/users", None),
    ):
        response = await api.request(method, url, json=body, headers=me)
        assert response.status_code == 403, (method, url, response.text)
        assert response.json()["error"] == "not_permitted"

    for field, value in (
        ("role", "admin"),
        ("is_active", False),
        ("profile_type_id", staff),
        ("username", "dave"),  # taken: the same answer as a free name, so nothing to probe
        ("username", "nobody-has-this-name"),
    ):
        response = await api.patch(f"/api/v1/users/{carol['id']}", json={field: value}, headers=me)
        assert response.status_code == 403, (field, response.text)
        assert "administrators" in response.json()["detail"]
    rows = await outbox(sandbox, carol["id"])
    assert [(r["version"], r["data"]["role"]) for r in rows] == [(1, "user"), (2, "user")]


async def test_admins_update_users_and_get_typed_errors(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    staff = await make_profile_type(api, admin, "Staff")
    erin = await create_user(api, admin, "erin")
    await create_user(api, admin, "frank")
    url = f"/api/v1/users/{erin['id']}"

    response = await api.patch(
        url,
        json={"username": "erin2", "role": "admin", "profile_type_id": staff, "email": None},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["username"], body["role"], body["profile_type_id"]) == ("erin2", "admin", staff)
    assert body["version"] == 2

    unchanged = await api.patch(url, json={"username": "erin2"}, headers=admin)
    assert unchanged.status_code == 200
    assert unchanged.json()["sync_job_id"] is None
    assert unchanged.json()["version"] == 2

    taken = await api.patch(url, json={"username": "FRANK"}, headers=admin)
    assert taken.status_code == 409
    assert taken.json()["error"] == "already_exists"
    unknown = await api.patch(url, json={"profile_type_id": str(uuid.uuid4())}, headers=admin)
    assert unknown.status_code == 422
    assert unknown.json()["error"] == "unknown_profile_type"
    for bad in (
        {"username": None},
        {"is_active": None},
        {"username": "no spaces allowed"},
        {"email": "not an email"},
        {"password": "not here"},
        {"role": "root"},
        {"is_active": 10**400},
    ):
        response = await api.patch(url, json=bad, headers=admin)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"] == "invalid_input"

    missing = await api.patch(f"/api/v1/users/{uuid.uuid4()}", json={"email": None}, headers=admin)
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    not_a_uuid = await api.get("/api/v1/users/12345", headers=admin)
    assert not_a_uuid.status_code == 422

    admin_id = (await api.get("/api/v1/users/me", headers=admin)).json()["id"]
    for method, path, body in (
        ("PATCH", "", {"role": "user"}),
        ("PATCH", "", {"is_active": False}),
        ("POST", "/deactivate", None),
        ("DELETE", "", None),
    ):
        response = await api.request(
            method, f"/api/v1/users/{admin_id}{path}", json=body, headers=admin
        )
        assert response.status_code == 403, (method, path, response.text)
    assert [r["version"] for r in await outbox(sandbox, erin["id"])] == [1, 2]


async def test_malformed_requests_are_4xx_with_the_error_body(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    for content, content_type in (
        (b'{"username": "x",', "application/json"),
        (b"username=gina", "application/x-www-form-urlencoded"),
        (b'{"username": "gina", "password": "a fine password 1"}', "text/plain"),
        (b"\xff\xfe", "application/json"),
        (b'{"username": "gina", "password": "a fine \\u0000 password"}', "application/json"),
        (b'{"username": "gina", "password": "a fine \\ud800 password"}', "application/json"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    ):
        response = await api.post(
            "/api/v1/users",
            content=content,
            headers={**admin, "Content-Type": content_type},
        )
        assert 400 <= response.status_code < 500, (content[:40], response.text)
        assert set(response.json()) == {"error", "detail"}
    token = await api.post(
        "/api/v1/auth/token", data={"username": "admin\x00", "password": "whatever"}
    )
    assert token.status_code == 401
    wrong_method = await api.put("/api/v1/users", headers=admin)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"


async def test_deactivation_and_deletion_reach_the_request_network(
    api: httpx.AsyncClient, sandbox: Sandbox, worker: Worker, importer: Importer
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    gina = await create_user(api, admin, "gina", "secret of g. 1234")
    hank = await create_user(api, admin, "hank")
    gina_token = await login(api, "gina", "secret of g. 1234")

    deactivated = await api.post(f"/api/v1/users/{gina['id']}/deactivate", headers=admin)
    assert deactivated.status_code == 200, deactivated.text
    assert deactivated.json()["is_active"] is False
    assert deactivated.json()["version"] == 2
    assert (await api.get("/api/v1/users/me", headers=gina_token)).status_code == 401
    again = await api.post(f"/api/v1/users/{gina['id']}/deactivate", headers=admin)
    assert again.json()["sync_job_id"] is None

    deleted = await api.delete(f"/api/v1/users/{hank['id']}", headers=admin)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["version"] == 2
    assert (await api.get(f"/api/v1/users/{hank['id']}", headers=admin)).status_code == 404
    assert (await api.delete(f"/api/v1/users/{hank['id']}", headers=admin)).status_code == 404

    gina_rows = await outbox(sandbox, gina["id"])
    assert [(r["version"], r["op"], r["data"]["is_active"]) for r in gina_rows] == [
        (1, "upsert", True),
        (2, "upsert", False),
    ]
    hank_rows = await outbox(sandbox, hank["id"])
    assert [(r["version"], r["op"], r["data"]) for r in hank_rows][-1] == (2, "delete", None)

    async def arrived() -> bool:
        g = await synced(sandbox, "synced_users", gina["id"])
        h = await synced(sandbox, "synced_users", hank["id"])
        return bool(g and h and g["version"] == 2 and h["version"] == 2)

    await eventually(arrived)
    g = await synced(sandbox, "synced_users", gina["id"])
    h = await synced(sandbox, "synced_users", hank["id"])
    assert g is not None
    assert h is not None
    assert (g["is_active"], g["deleted"]) == (False, False)
    assert (h["deleted"], h["password_hash"]) == (True, None)

    job = await api.get(f"/api/v1/jobs/{deleted.json()['sync_job_id']}", headers=admin)
    assert job.status_code == 200
    assert job.json()["state"] == "complete"
