"""Settings and profile types brought in from the previous deployment:
``POST /api/v1/settings/import``, ``POST /api/v1/profile-types/import`` and their ``netsync``
commands, against the real API and database.

What an operator checks: every good row is there with its value, a bad row is reported by its
line and never echoed, a re-run writes nothing (no new version, no outbox row), ``update`` takes
the file's values, and only an administrator may import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.imports import run
from tests.commands import anetsync
from tests.factories import HASHES, admin_headers, create_user, login
from tests.queries import fetch
from tests.support import Sandbox

HASH = HASHES[0]


def ndjson(*rows: Any) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows)


async def _post(
    api: httpx.AsyncClient, path: str, headers: dict[str, str], body: bytes, media: str, **q: str
) -> httpx.Response:
    return await api.post(
        f"/api/v1/{path}/import",
        content=body,
        params=q,
        headers={**headers, "Content-Type": media},
        timeout=60,
    )


async def _outbox(sandbox: Sandbox, entity: str) -> int:
    rows = await fetch(
        sandbox.services.response_url,
        "SELECT count(*) AS n FROM outbox_events WHERE entity = $1",
        entity,
    )
    return int(rows[0]["n"])


async def test_settings_import_keeps_every_json_value_reports_bad_rows_and_reruns_clean(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    headers = await admin_headers(api, sandbox.response_settings())
    good: dict[str, Any] = {
        "app.title": "Acme",
        "mail.smtp_port": 587,
        "ratio.float": 1.0,
        "feature.flags": {"b": [1, 2], "a": None},
        "big.value": "x" * 60_000,  # near the 64 KiB a value may hold: longer than a users row
    }
    body = ndjson(
        *({"key": k, "value": v} for k, v in good.items()),
        {"key": "Bad Key", "value": 1},
        b'{"key": "nan.value", "value": NaN}',
        {"key": "no.value"},
        {"key": "too.big", "value": "y" * 70_000},
        {"key": "extra.field", "value": 1, "secret": "do-not-echo"},
    )
    answer = await _post(api, "settings", headers, body, "application/x-ndjson")
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert (summary["created"], summary["failed"], summary["lines"]) == (5, 5, 10)
    assert [e["line"] for e in summary["errors"]] == [6, 7, 8, 9, 10]
    assert "do-not-echo" not in answer.text
    assert "yyyy" not in answer.text
    stored = await fetch(
        sandbox.services.response_url, "SELECT key, value::text AS value, version FROM settings"
    )
    assert {r["key"]: orjson.loads(r["value"]) for r in stored} == good
    assert {r["version"] for r in stored} == {1}
    assert await _outbox(sandbox, "setting") == 5

    again = (await _post(api, "settings", headers, body, "application/x-ndjson")).json()
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 5)
    changed = ndjson({"key": "ratio.float", "value": 1}, {"key": "app.title", "value": "Acme"})
    # without update an existing key stays; with it, 1 replaces 1.0 (a different JSON value)
    kept = (await _post(api, "settings", headers, changed, "application/x-ndjson")).json()
    assert (kept["updated"], kept["unchanged"]) == (0, 2)
    updated = (
        await _post(api, "settings", headers, changed, "application/x-ndjson", update="true")
    ).json()
    assert (updated["updated"], updated["unchanged"]) == (1, 1)
    ratio = await fetch(
        sandbox.services.response_url,
        "SELECT value::text AS value, version FROM settings WHERE key = 'ratio.float'",
    )
    assert (ratio[0]["value"], ratio[0]["version"]) == ("1", 2)
    assert await _outbox(sandbox, "setting") == 6  # one new version, one outbox row


async def test_settings_from_csv_read_the_value_column_as_json(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    headers = await admin_headers(api, sandbox.response_settings())
    body = (
        b"\xef\xbb\xbfkey,value,description\r\n"
        b'app.title,"""Acme""",the title\r\n'
        b"mail.smtp_port,587,\r\n"
        b"app.bare,Acme,not JSON\r\n"
    )
    answer = await _post(api, "settings", headers, body, "text/csv")
    summary = answer.json()
    assert (summary["created"], summary["failed"]) == (2, 1), summary
    assert summary["errors"][0]["line"] == 4
    assert "not JSON" in summary["errors"][0]["error"]
    rows = await fetch(
        sandbox.services.response_url,
        "SELECT key, value::text AS value, description FROM settings ORDER BY key",
    )
    assert [(r["key"], r["value"], r["description"]) for r in rows] == [
        ("app.title", '"Acme"', "the title"),
        ("mail.smtp_port", "587", None),
    ]


async def test_profile_types_import_by_name_and_only_for_administrators(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    headers = await admin_headers(api, sandbox.response_settings())
    body = (
        b"name,description,permissions\n"
        b"Operator,runs the desk,users:read settings:read users:read\n"
        b"Auditor,,audit:read\n"
        b",nameless,x\n"
    )
    summary = (await _post(api, "profile-types", headers, body, "text/csv")).json()
    assert (summary["created"], summary["failed"]) == (2, 1), summary
    listed = (await api.get("/api/v1/profile-types", headers=headers)).json()["items"]
    assert {p["name"]: p["permissions"] for p in listed} == {
        "Operator": ["users:read", "settings:read"],
        "Auditor": ["audit:read"],
    }
    # names match case-insensitively: OPERATOR is Operator, and update takes the file's spelling
    renamed = ndjson({"name": "OPERATOR", "permissions": ["users:read"]})
    same = (await _post(api, "profile-types", headers, renamed, "application/x-ndjson")).json()
    assert (same["created"], same["unchanged"]) == (0, 1)
    updated = (
        await _post(api, "profile-types", headers, renamed, "application/x-ndjson", update="true")
    ).json()
    assert updated["updated"] == 1
    listed = (await api.get("/api/v1/profile-types", headers=headers)).json()["items"]
    assert sorted(p["name"] for p in listed) == ["Auditor", "OPERATOR"]
    assert await _outbox(sandbox, "profile_type") == 3

    await create_user(api, headers, "reader", "a plain user's pass phrase")
    user = await login(api, "reader", "a plain user's pass phrase")
    for path in ("settings", "profile-types"):
        refused = await _post(api, path, user, b'{"name": "x"}\n', "application/x-ndjson")
        assert refused.status_code == 403, refused.text
        anonymous = await _post(api, path, {}, b'{"name": "x"}\n', "application/x-ndjson")
        assert anonymous.status_code == 401


async def test_the_commands_import_settings_and_profile_types_from_files(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    settings = tmp_path / "settings.ndjson"
    settings.write_bytes(ndjson({"key": "app.title", "value": "From a file"}, {"key": "BAD"}))
    types = tmp_path / "profile-types.csv"
    types.write_text("name,permissions\nOperator,users:read\n")
    results = {}
    for group, source in (("settings", settings), ("profile-types", types)):
        done = await anetsync(sandbox, group, "import", str(source), "--json")
        results[group] = (done.returncode, orjson.loads(done.stdout), done.stderr)
    code, summary, _ = results["settings"]
    assert code == 1  # a row was refused
    assert (summary["created"], summary["failed"]) == (1, 1)
    code, summary, stderr = results["profile-types"]
    assert code == 0, stderr
    assert summary["created"] == 1
    rows = await fetch(
        sandbox.services.response_url,
        "SELECT (SELECT value::text FROM settings WHERE key = 'app.title') AS title,"
        " (SELECT permissions::text FROM profile_types WHERE name = 'Operator') AS perms",
    )
    assert (rows[0]["title"], rows[0]["perms"]) == ('"From a file"', '["users:read"]')


async def test_users_name_their_profile_type_and_an_unknown_one_refuses_the_row(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    headers = await admin_headers(api, sandbox.response_settings())
    types = ndjson({"name": "Operator", "permissions": ["users:read"]})
    assert (await _post(api, "profile-types", headers, types, "application/x-ndjson")).json()[
        "created"
    ] == 1
    body = ndjson(
        {"username": "ann", "password_hash": HASH, "profile_type": "operator"},
        {"username": "bob", "password_hash": HASH, "profile_type": "Nobody"},
        {"username": "cid", "password_hash": HASH},
    )
    summary = (await _post(api, "users", headers, body, "application/x-ndjson")).json()
    assert (summary["created"], summary["failed"]) == (2, 1), summary
    assert summary["errors"] == [{"line": 2, "error": "profile_type: no profile type of that name"}]
    rows = await fetch(
        sandbox.services.response_url,
        "SELECT u.username, p.name FROM users u LEFT JOIN profile_types p"
        " ON p.id = u.profile_type_id WHERE u.username <> 'admin' ORDER BY u.username",
    )
    assert [(r["username"], r["name"]) for r in rows] == [("ann", "Operator"), ("cid", None)]
    outbox = await fetch(
        sandbox.services.response_url,
        "SELECT data->>'profile_type_id' AS pt FROM outbox_events e JOIN users u"
        " ON u.id = e.entity_id WHERE u.username = 'ann'",
    )
    assert outbox[0]["pt"] is not None  # and it syncs with the user
    # a later import without a profile type leaves the one the user has
    again = ndjson({"username": "ann", "password_hash": HASH, "email": "ann@example.org"})
    changed = await _post(api, "users", headers, again, "application/x-ndjson", update="true")
    assert changed.json()["updated"] == 1
    kept = await fetch(
        sandbox.services.response_url,
        "SELECT profile_type_id IS NOT NULL AS has FROM users WHERE username = 'ann'",
    )
    assert kept[0]["has"] is True
    atomic = await _post(api, "users", headers, body, "application/x-ndjson", atomic="true")
    assert atomic.status_code == 422
    assert "line 2" in atomic.json()["detail"]


async def test_a_csv_without_its_header_row_never_echoes_the_first_rows_secrets(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    headers = await admin_headers(api, sandbox.response_settings())
    body = (
        b"alice,alice@example.org,Sup3rSecret-Pass-phrase\n"
        b"bob,bob@example.org,another-Secret-phrase\n"
    )
    answer = await _post(api, "users", headers, body, "text/csv")
    assert answer.status_code == 200, answer.text
    assert answer.json()["failed"] == 1
    for secret in ("Sup3rSecret", "alice", "another-Secret"):
        assert secret not in answer.text
    assert "a field that is not one of" in answer.text


async def test_update_changes_only_the_fields_a_row_gives(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    headers = await admin_headers(api, sandbox.response_settings())
    first = ndjson(
        {"username": "boss", "password_hash": HASH, "role": "admin", "email": "b@example.org"},
        {"username": "gone", "password_hash": HASH, "is_active": False},
    )
    assert (await _post(api, "users", headers, first, "application/x-ndjson")).json()[
        "created"
    ] == 2
    # a later file without role, is_active or email: update must not demote, reactivate, clear
    later = ndjson(
        {"username": "boss", "password_hash": HASH},
        {"username": "gone", "password_hash": HASH, "email": None},
    )
    summary = (
        await _post(api, "users", headers, later, "application/x-ndjson", update="true")
    ).json()
    assert (summary["updated"], summary["unchanged"]) == (0, 2)
    users = await fetch(
        sandbox.services.response_url,
        "SELECT username, role, is_active, email FROM users WHERE username IN ('boss', 'gone')"
        " ORDER BY username",
    )
    assert [(r["role"], r["is_active"], r["email"]) for r in users] == [
        ("admin", True, "b@example.org"),
        ("user", False, None),
    ]
    settings = ndjson({"key": "app.title", "value": "A", "description": "kept"})
    await _post(api, "settings", headers, settings, "application/x-ndjson")
    newer = ndjson({"key": "app.title", "value": "B"})
    await _post(api, "settings", headers, newer, "application/x-ndjson", update="true")
    types = ndjson({"name": "Ops", "description": "kept", "permissions": ["a:b"]})
    await _post(api, "profile-types", headers, types, "application/x-ndjson")
    renamed = ndjson({"name": "OPS"})
    await _post(api, "profile-types", headers, renamed, "application/x-ndjson", update="true")
    rows = await fetch(
        sandbox.services.response_url,
        "SELECT (SELECT value::text || ' ' || description FROM settings) AS setting,"
        " (SELECT name || ' ' || description || ' ' || permissions::text FROM profile_types)"
        " AS profile_type",
    )
    assert (rows[0]["setting"], rows[0]["profile_type"]) == ('"B" kept', 'OPS kept ["a:b"]')


async def test_a_yes_no_field_that_says_neither_is_a_bad_row(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    headers = await admin_headers(api, sandbox.response_settings())
    body = f"username,password_hash,is_active\nann,{HASH},Y\nbob,{HASH},maybe\n".encode()
    summary = (await _post(api, "users", headers, body, "text/csv")).json()
    assert (summary["created"], summary["failed"]) == (1, 1)
    assert summary["errors"][0]["line"] == 3


async def test_an_atomic_import_is_held_whole_first_and_a_larger_one_is_refused(
    api: httpx.AsyncClient, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = await admin_headers(api, sandbox.response_settings())
    rows = ndjson(*({"key": f"held.k{i}", "value": i} for i in range(40)))
    monkeypatch.setattr(run, "MAX_ATOMIC_BYTES", len(rows))
    held = await _post(api, "settings", headers, rows, "application/x-ndjson", atomic="true")
    assert held.json()["created"] == 40
    larger = rows + ndjson({"key": "held.extra", "value": 1})
    refused = await _post(api, "settings", headers, larger, "application/x-ndjson", atomic="true")
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"] == "payload_too_large"
    kept = await fetch(sandbox.services.response_url, "SELECT count(*) AS n FROM settings")
    assert kept[0]["n"] == 40


async def test_an_atomic_import_with_no_room_to_hold_it_is_unavailable_not_an_error(
    api: httpx.AsyncClient, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full ``/tmp`` (here ``/dev/full``, whose every write and flush fails with ENOSPC) is
    the server's trouble: a 503 with its typed body, nothing imported."""
    headers = await admin_headers(api, sandbox.response_settings())
    monkeypatch.setattr("tempfile.TemporaryFile", lambda: open("/dev/full", "r+b"))  # noqa: SIM115
    for rows in (2, 2000):  # held in the file's buffer (the flush fails), or written through
        body = ndjson(*({"key": f"full.k{i}", "value": i} for i in range(rows)))
        answer = await _post(api, "settings", headers, body, "application/x-ndjson", atomic="true")
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "service_unavailable"
    kept = await fetch(sandbox.services.response_url, "SELECT count(*) AS n FROM settings")
    assert kept[0]["n"] == 0
