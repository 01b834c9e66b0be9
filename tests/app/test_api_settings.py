"""The settings API through the real app and databases: CRUD by key, JSON values that PostgreSQL
and the export files can carry, roles, and every change versioned through the outbox."""

from __future__ import annotations

from typing import Any

import httpx
from arq.worker import Worker

from importer.daemon.loop import Importer
from tests.factories import admin_headers, create_user, login
from tests.queries import outbox, synced
from tests.support import Sandbox, eventually


async def put_setting(
    api: httpx.AsyncClient, admin: dict[str, str], key: str, value: Any, **extra: Any
) -> dict[str, Any]:
    response = await api.post(
        "/api/v1/settings", json={"key": key, "value": value, **extra}, headers=admin
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_settings_are_created_read_listed_updated_and_deleted(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    title = await put_setting(api, admin, "app.title", "Netsync", description="Shown in the UI")
    assert (title["version"], title["value"]) == (1, "Netsync")
    assert title["sync_job_id"].startswith("sync:")
    await put_setting(api, admin, "mail.smtp_port", 587)
    await put_setting(api, admin, "mail.from", {"name": "Ops", "tls": True, "cc": [1, 2.5, None]})
    await put_setting(api, admin, "mailer.enabled", False)

    duplicate = await api.post(
        "/api/v1/settings", json={"key": "app.title", "value": "x"}, headers=admin
    )
    assert duplicate.status_code == 409
    assert duplicate.json()["error"] == "already_exists"

    listed = (await api.get("/api/v1/settings?prefix=mail.", headers=admin)).json()
    assert [s["key"] for s in listed["items"]] == ["mail.from", "mail.smtp_port"]
    assert listed["items"][0]["value"] == {"name": "Ops", "tls": True, "cc": [1, 2.5, None]}
    page = (await api.get("/api/v1/settings?limit=2&offset=2", headers=admin)).json()
    assert [s["key"] for s in page["items"]] == ["mail.smtp_port", "mailer.enabled"]
    assert page["total"] == 4
    assert (await api.get("/api/v1/settings?prefix=%25", headers=admin)).json()["total"] == 0

    read = await api.get("/api/v1/settings/app.title", headers=admin)
    assert read.status_code == 200
    assert read.json()["description"] == "Shown in the UI"

    updated = await api.put("/api/v1/settings/app.title", json={"value": "Sync"}, headers=admin)
    assert updated.status_code == 200, updated.text
    assert (updated.json()["version"], updated.json()["value"]) == (2, "Sync")
    assert updated.json()["description"] == "Shown in the UI"  # kept when not given
    same = await api.put("/api/v1/settings/app.title", json={"value": "Sync"}, headers=admin)
    assert (same.json()["version"], same.json()["sync_job_id"]) == (2, None)
    cleared = await api.put(
        "/api/v1/settings/app.title", json={"value": "Sync", "description": None}, headers=admin
    )
    assert (cleared.json()["version"], cleared.json()["description"]) == (3, None)
    port = await api.put("/api/v1/settings/mail.smtp_port", json={"value": 587.0}, headers=admin)
    assert port.json()["version"] == 2  # 587.0 is another JSON value than 587

    deleted = await api.delete("/api/v1/settings/app.title", headers=admin)
    assert deleted.status_code == 200
    assert deleted.json()["version"] == 4
    assert (await api.get("/api/v1/settings/app.title", headers=admin)).status_code == 404
    missing = await api.put("/api/v1/settings/app.title", json={"value": 1}, headers=admin)
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    rows = await outbox(sandbox, title["id"])
    assert [(r["version"], r["op"]) for r in rows] == [
        (1, "upsert"),
        (2, "upsert"),
        (3, "upsert"),
        (4, "delete"),
    ]
    assert rows[2]["data"] == {"key": "app.title", "value": "Sync", "description": None}
    again = await put_setting(api, admin, "app.title", "Back")
    assert again["id"] != title["id"]
    assert again["version"] == 1


async def test_keys_and_values_the_request_network_could_not_take_are_422(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    for key in ("App.Title", "app..title", ".app", "app title", "1app", "a" * 201, "app.t\x00"):
        response = await api.post("/api/v1/settings", json={"key": key, "value": 1}, headers=admin)
        assert response.status_code == 422, (key, response.text)
        assert response.json()["error"] == "invalid_input"
    for path in ("App.Title", "app..title", "a%00b"):
        assert (await api.get(f"/api/v1/settings/{path}", headers=admin)).status_code == 422

    for raw in (
        b'{"key": "a.b", "value": NaN}',
        b'{"key": "a.b", "value": Infinity}',
        b'{"key": "a.b", "value": 1e400}',
        b'{"key": "a.b", "value": 18446744073709551616}',
        b'{"key": "a.b", "value": [-4.5631227517436510e22]}',
        b'{"key": "a.b", "value": "nul \\u0000 inside"}',
        b'{"key": "a.b", "value": {"\\u0000": 1}}',
        b'{"key": "a.b", "value": "\\udc00"}',
        b'{"key": "a.b", "value": ' + b"[" * 40 + b"]" * 40 + b"}",
        b'{"key": "a.b", "value": "' + b"x" * 70_000 + b'"}',
        b'{"key": "a.b", "value": 1, "description": "' + b"d" * 2001 + b'"}',
        b'{"key": "a.b", "value": 1, "extra": true}',
        b'{"key": "a.b"}',
    ):
        response = await api.post(
            "/api/v1/settings",
            content=raw,
            headers={**admin, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, (raw[:60], response.text)
        assert response.json()["error"] == "invalid_input"
    assert (await api.get("/api/v1/settings", headers=admin)).json()["total"] == 0
    big = await put_setting(api, admin, "a.big", 2**63 - 1)
    assert big["value"] == 2**63 - 1


async def test_everyone_signed_in_reads_settings_and_only_admins_write(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    await put_setting(api, admin, "app.title", "Netsync")
    await create_user(api, admin, "ivan", "secret of i. 1234")
    ivan = await login(api, "ivan", "secret of i. 1234")

    assert (await api.get("/api/v1/settings", headers=ivan)).json()["total"] == 1
    assert (await api.get("/api/v1/settings/app.title", headers=ivan)).json()["value"] == "Netsync"
    for method, url, body in (
        ("POST", "/api/v1/settings", {"key": "x.y", "value": 1}),
        ("PUT", "/api/v1/settings/app.title", {"value": "mine"}),
        ("DELETE", "/api/v1/settings/app.title", None),
    ):
        response = await api.request(method, url, json=body, headers=ivan)
        assert response.status_code == 403, (method, response.text)
        assert response.json()["error"] == "not_permitted"
    assert (await api.get("/api/v1/settings/app.title")).status_code == 401


async def test_setting_changes_and_deletions_reach_the_request_network(
    api: httpx.AsyncClient, sandbox: Sandbox, worker: Worker, importer: Importer
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    kept = await put_setting(api, admin, "app.theme", {"dark": True})
    gone = await put_setting(api, admin, "app.legacy", "old")
    await api.put("/api/v1/settings/app.theme", json={"value": {"dark": False}}, headers=admin)
    await api.delete("/api/v1/settings/app.legacy", headers=admin)

    async def arrived() -> bool:
        k = await synced(sandbox, "synced_settings", kept["id"])
        g = await synced(sandbox, "synced_settings", gone["id"])
        return bool(k and g and k["version"] == 2 and g["version"] == 2)

    await eventually(arrived)
    k = await synced(sandbox, "synced_settings", kept["id"])
    g = await synced(sandbox, "synced_settings", gone["id"])
    assert k is not None
    assert g is not None
    assert (k["key"], k["value"], k["deleted"]) == ("app.theme", '{"dark": false}', False)
    assert (g["deleted"], g["key"]) == (True, None)
