"""The profile types API through the real app and databases: CRUD, unique names, users that
reference one, deletion refused while in use, and tombstones reaching the Request Network."""

from __future__ import annotations

import uuid

import httpx
from arq.worker import Worker

from importer.daemon.loop import Importer
from tests.factories import admin_headers, create_user, login
from tests.queries import outbox, synced
from tests.support import Sandbox, eventually

BASE = "/api/v1/profile-types"


async def test_profile_types_are_created_read_listed_updated_and_deleted(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    created = await api.post(
        BASE,
        json={
            "name": "Auditor",
            "description": "Reads everything",
            "permissions": ["reports:read", "users:read", "reports:read"],
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    auditor = created.json()
    assert auditor["permissions"] == ["reports:read", "users:read"]
    assert auditor["version"] == 1
    assert auditor["sync_job_id"].startswith("sync:")
    await api.post(BASE, json={"name": "Clerk"}, headers=admin)

    duplicate = await api.post(BASE, json={"name": "AUDITOR"}, headers=admin)
    assert duplicate.status_code == 409
    assert duplicate.json()["error"] == "already_exists"
    for bad in (
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 101},
        {"name": "ok", "permissions": ["has space"]},
        {"name": "ok", "permissions": [""]},
        {"name": "ok", "permissions": "reports:read"},
        {"name": "ok", "description": "d" * 2001},
        {"name": "ok", "colour": "red"},
    ):
        response = await api.post(BASE, json=bad, headers=admin)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"] == "invalid_input"

    listed = (await api.get(f"{BASE}?limit=1&offset=1", headers=admin)).json()
    assert [p["name"] for p in listed["items"]] == ["Clerk"]
    assert listed["total"] == 2
    url = f"{BASE}/{auditor['id']}"
    assert (await api.get(url, headers=admin)).json()["description"] == "Reads everything"
    assert (await api.get(f"{BASE}/{uuid.uuid4()}", headers=admin)).status_code == 404
    assert (await api.get(f"{BASE}/not-a-uuid", headers=admin)).status_code == 422

    patched = await api.patch(
        url, json={"permissions": ["reports:read"], "description": None}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["version"], patched.json()["description"]) == (2, None)
    noop = await api.patch(url, json={"name": "Auditor"}, headers=admin)
    assert (noop.json()["version"], noop.json()["sync_job_id"]) == (2, None)
    renamed_to_taken = await api.patch(url, json={"name": "clerk"}, headers=admin)
    assert renamed_to_taken.status_code == 409
    assert (await api.patch(url, json={"name": None}, headers=admin)).status_code == 422

    deleted = await api.delete(url, headers=admin)
    assert deleted.status_code == 200
    assert deleted.json()["version"] == 3
    assert (await api.delete(url, headers=admin)).status_code == 404
    rows = await outbox(sandbox, auditor["id"])
    assert [(r["version"], r["op"]) for r in rows] == [(1, "upsert"), (2, "upsert"), (3, "delete")]
    assert rows[1]["data"] == {
        "name": "Auditor",
        "description": None,
        "permissions": ["reports:read"],
    }


async def test_a_profile_type_in_use_cannot_be_deleted_and_unknown_ones_are_refused(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    staff = (await api.post(BASE, json={"name": "Staff"}, headers=admin)).json()
    jane = await create_user(api, admin, "jane", profile_type_id=staff["id"])

    in_use = await api.delete(f"{BASE}/{staff['id']}", headers=admin)
    assert in_use.status_code == 409
    assert in_use.json()["error"] == "conflict"
    assert "1 user" in in_use.json()["detail"]

    unknown = await api.post(
        "/api/v1/users",
        json={
            "username": "kim",
            "password": "a long pass phrase 1",
            "profile_type_id": str(uuid.uuid4()),
        },
        headers=admin,
    )
    assert unknown.status_code == 422
    assert unknown.json()["error"] == "unknown_profile_type"

    await api.patch(f"/api/v1/users/{jane['id']}", json={"profile_type_id": None}, headers=admin)
    assert (await api.delete(f"{BASE}/{staff['id']}", headers=admin)).status_code == 200


async def test_users_read_profile_types_and_only_admins_write_them(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    staff = (await api.post(BASE, json={"name": "Staff"}, headers=admin)).json()
    await create_user(api, admin, "leo", "secret of l. 1234")
    leo = await login(api, "leo", "secret of l. 1234")

    assert (await api.get(BASE, headers=leo)).json()["total"] == 1
    assert (await api.get(f"{BASE}/{staff['id']}", headers=leo)).status_code == 200
    for method, url, body in (
        ("POST", BASE, {"name": "Mine"}),
        ("PATCH", f"{BASE}/{staff['id']}", {"name": "Mine"}),
        ("DELETE", f"{BASE}/{staff['id']}", None),
    ):
        response = await api.request(method, url, json=body, headers=leo)
        assert response.status_code == 403, (method, response.text)


async def test_profile_type_changes_and_deletions_reach_the_request_network(
    api: httpx.AsyncClient, sandbox: Sandbox, worker: Worker, importer: Importer
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    kept = (await api.post(BASE, json={"name": "Kept"}, headers=admin)).json()
    gone = (await api.post(BASE, json={"name": "Gone"}, headers=admin)).json()
    await api.patch(f"{BASE}/{kept['id']}", json={"permissions": ["a:b"]}, headers=admin)
    await api.delete(f"{BASE}/{gone['id']}", headers=admin)

    async def arrived() -> bool:
        k = await synced(sandbox, "synced_profile_types", kept["id"])
        g = await synced(sandbox, "synced_profile_types", gone["id"])
        return bool(k and g and k["version"] == 2 and g["version"] == 2)

    await eventually(arrived)
    k = await synced(sandbox, "synced_profile_types", kept["id"])
    g = await synced(sandbox, "synced_profile_types", gone["id"])
    assert k is not None
    assert g is not None
    assert (k["name"], k["permissions"], k["deleted"]) == ("Kept", '["a:b"]', False)
    assert (g["name"], g["deleted"]) == (None, True)
