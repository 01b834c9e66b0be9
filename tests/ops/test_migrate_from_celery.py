"""``netsync migrate-from-celery``: the previous deployment's tables, read from its database.

The fixture is that deployment's schema as its SQLAlchemy models made it (``users`` with
``hashed_password`` and ``is_superuser``, ``settings`` with a ``jsonb`` value, ``profile_types``
with a JSON array of permissions). Its rows reach the Request Network through the outbox, and its
users sign in there with their old passwords; a refused row is reported by its number in the
table's order and the others go on; a re-run changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import bcrypt
import httpx
import orjson
import pytest

from netsync.config import to_libpq_url, with_database
from ops.legacy import MAX_ROW_BYTES
from tests.commands import anetsync
from tests.processes import Process, start_system
from tests.queries import fetch
from tests.support import Sandbox, eventually

PASSWORDS = [f"old deployment pass phrase {i}" for i in range(4)]
HASHES = [bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode() for p in PASSWORDS]
USERS = 2_000

SCHEMA = """
CREATE TABLE profile_types (
    id serial PRIMARY KEY, name varchar(100) NOT NULL UNIQUE, description text,
    permissions jsonb NOT NULL DEFAULT '[]'
);
CREATE TABLE settings (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), key varchar(200) NOT NULL UNIQUE,
    value jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE users (
    id serial PRIMARY KEY, username varchar(50) NOT NULL UNIQUE, email varchar(255),
    hashed_password varchar(255) NOT NULL, is_active boolean NOT NULL DEFAULT true,
    is_superuser boolean NOT NULL DEFAULT false, profile_type_id integer,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

SETTINGS: dict[str, Any] = {
    "app.title": "Old App",
    "mail.smtp_port": 587,
    "feature.flags": {"beta": True, "ratio": 0.25},
    "ui.languages": ["fa", "en"],
    "maintenance.on": False,
}


@pytest.fixture
async def legacy(sandbox: Sandbox) -> AsyncIterator[str]:
    """The old deployment's database, with its schema and rows."""
    name = f"nst_{sandbox.services.run_id}_celery"
    admin = with_database(to_libpq_url(sandbox.services.response_url), "postgres")
    server = await asyncpg.connect(admin)
    try:
        await server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await server.execute(f'CREATE DATABASE "{name}"')
        url = with_database(admin, name)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(SCHEMA)
            await conn.executemany(
                "INSERT INTO profile_types (name, description, permissions) VALUES ($1, $2, $3)",
                [
                    ("Operator", "runs the desk", '["users:read", "settings:read"]'),
                    ("Auditor", None, '["audit:read"]'),
                    ("Guest", "looks around", "[]"),
                ],
            )
            await conn.executemany(
                "INSERT INTO settings (key, value) VALUES ($1, $2)",
                [(k, orjson.dumps(v).decode()) for k, v in SETTINGS.items()],
            )
            await conn.executemany(
                "INSERT INTO users"
                " (username, email, hashed_password, is_active, is_superuser, profile_type_id)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                [
                    (
                        f"old{i:05d}",
                        f"old{i:05d}@example.org",
                        HASHES[i % len(HASHES)],
                        i != 7,
                        i == 3,
                        1 if i % 10 == 0 else None,  # every tenth user is an Operator
                    )
                    for i in range(USERS)
                ]
                + [
                    ("old00000x", "not an address", HASHES[0], True, False, None),
                    ("old00001x", "x@example.org", "$1$md5crypt$notsupported", True, False, 2),
                ],
            )
        finally:
            await conn.close()
        yield url
    finally:
        await server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await server.close()


async def _migrate(sandbox: Sandbox, url: str, *args: str) -> tuple[int, Any, str]:
    done = await anetsync(
        sandbox, "migrate-from-celery", "--json", *args, NETSYNC_CELERY_DATABASE_URL=url
    )
    return done.returncode, orjson.loads(done.stdout) if done.stdout.strip() else None, done.stderr


@pytest.mark.slow
async def test_the_old_deployment_arrives_whole_and_its_users_sign_in_on_the_request_side(
    sandbox: Sandbox, procs: list[Process], legacy: str
) -> None:
    _, req = await start_system(sandbox, procs)
    code, result, stderr = await _migrate(sandbox, legacy)
    assert code == 1, stderr  # two rows refused, the rest imported
    tables = result["tables"]
    counts = {name: (t["created"], t["failed"]) for name, t in tables.items()}
    assert counts == {"profile_types": (3, 0), "settings": (5, 0), "users": (USERS, 2)}
    # numbered along the table's order (by username): old00000x is second, old00001x fourth
    errors = tables["users"]["errors"]
    assert [e["line"] for e in errors] == [2, 4]
    assert "email" in errors[0]["error"]
    assert "not a bcrypt" in errors[1]["error"]
    assert "not an address" not in str(result)  # a refused row's values are not echoed

    async def arrived() -> bool:
        rows = await fetch(
            sandbox.services.request_url,
            "SELECT (SELECT count(*) FROM synced_users WHERE username LIKE 'old%') AS users,"
            " (SELECT count(*) FROM synced_settings) AS settings,"
            " (SELECT count(*) FROM synced_profile_types) AS profile_types",
        )
        return (rows[0]["users"], rows[0]["settings"], rows[0]["profile_types"]) == (USERS, 5, 3)

    await eventually(arrived, timeout=90)
    settings = await fetch(sandbox.services.request_url, "SELECT key, value FROM synced_settings")
    assert {r["key"]: orjson.loads(r["value"]) for r in settings} == SETTINGS
    operator = await fetch(
        sandbox.services.request_url,
        "SELECT permissions FROM synced_profile_types WHERE name = 'Operator'",
    )
    assert orjson.loads(operator[0]["permissions"]) == ["users:read", "settings:read"]
    roles = await fetch(
        sandbox.services.response_url,
        "SELECT username, role, is_active FROM users WHERE username IN ('old00003', 'old00007')"
        " ORDER BY username",
    )
    assert [(r["role"], r["is_active"]) for r in roles] == [("admin", True), ("user", False)]
    operators = await fetch(
        sandbox.services.request_url,
        "SELECT count(*) AS n FROM synced_users u JOIN synced_profile_types p"
        " ON p.id = u.profile_type_id WHERE p.name = 'Operator'",
    )
    assert operators[0]["n"] == USERS // 10  # each user's profile type came along, by name
    async with httpx.AsyncClient(base_url=req) as client:
        for i in (0, 1234, USERS - 1):
            login = await client.post(
                "/api/v1/auth/login",
                json={"username": f"old{i:05d}", "password": PASSWORDS[i % len(PASSWORDS)]},
            )
            assert login.status_code == 200, login.text

    code, again, stderr = await _migrate(sandbox, legacy)
    assert code == 1, stderr
    assert {n: (t["created"], t["updated"]) for n, t in again["tables"].items()} == {
        "profile_types": (0, 0),
        "settings": (0, 0),
        "users": (0, 0),
    }
    assert again["tables"]["users"]["unchanged"] == USERS


async def test_a_table_without_a_needed_column_is_named_and_nothing_is_written(
    sandbox: Sandbox, legacy: str
) -> None:
    conn = await asyncpg.connect(legacy)
    try:
        await conn.execute("ALTER TABLE users RENAME COLUMN hashed_password TO secret")
    finally:
        await conn.close()
    code, result, stderr = await _migrate(sandbox, legacy)
    assert code == 2
    assert result is None
    assert "public.users has no column hashed_password" in stderr
    written = await fetch(
        sandbox.services.response_url,
        "SELECT (SELECT count(*) FROM profile_types) + (SELECT count(*) FROM settings) AS n",
    )
    assert written[0]["n"] == 0  # profile types and settings were fine, and still not written


async def test_an_unreachable_old_database_is_a_clear_error_without_its_password(
    sandbox: Sandbox,
) -> None:
    url = "postgresql://celery:s3cret-pw@127.0.0.1:1/celery"
    code, _, stderr = await _migrate(sandbox, url)
    assert code == 3
    assert "cannot reach the old database" in stderr
    assert "s3cret-pw" not in stderr


async def test_a_column_of_the_wrong_type_stops_the_migration_before_anything_is_written(
    sandbox: Sandbox, legacy: str
) -> None:
    conn = await asyncpg.connect(legacy)
    try:
        await conn.execute(
            "ALTER TABLE users ALTER COLUMN is_superuser TYPE text USING is_superuser::text"
        )
    finally:
        await conn.close()
    code, _, stderr = await _migrate(sandbox, legacy)
    assert code == 2, stderr
    assert "public.users cannot be read" in stderr
    written = await fetch(
        sandbox.services.response_url,
        "SELECT (SELECT count(*) FROM profile_types) + (SELECT count(*) FROM settings) AS n",
    )
    assert written[0]["n"] == 0


async def test_a_row_larger_than_an_import_line_is_refused_by_number_and_never_fetched(
    sandbox: Sandbox, legacy: str
) -> None:
    """A setting whose value is megabytes (a cursor prefetches hundreds of rows at a time) is
    measured in the old database and refused there, like an import file's overlong line; a
    value the checks accept is imported however its old ``json`` column indents it (310 KB of
    text here for 50 KB of JSON), and so are the rows around them."""
    wide = {f"k{i:04d}": {"a": [1, 2]} for i in range(2500)}
    conn = await asyncpg.connect(legacy)
    try:
        await conn.execute("ALTER TABLE settings ALTER COLUMN value TYPE json USING value::json")
        await conn.execute(
            "INSERT INTO settings (key, value) VALUES ('big.blob', to_json(repeat('x', $1::int)))",
            8 * 1024 * 1024,
        )
        await conn.execute(
            "INSERT INTO settings (key, value) VALUES ('wide.value', $1::json)",
            json.dumps(wide, indent=8),
        )
    finally:
        await conn.close()
    code, result, stderr = await _migrate(sandbox, legacy)
    assert code == 1, stderr
    settings = result["tables"]["settings"]
    assert (settings["created"], settings["failed"]) == (len(SETTINGS) + 1, 1)
    # numbered along the table's order (by key): big.blob comes after app.title
    assert [(e["line"], e["error"]) for e in settings["errors"]] == [
        (2, f"row longer than {MAX_ROW_BYTES} bytes")
    ]
    stored = await fetch(
        sandbox.services.response_url, "SELECT key, value::text AS value FROM settings"
    )
    values = {r["key"]: orjson.loads(r["value"]) for r in stored}
    assert values == {**SETTINGS, "wide.value": wide}
