"""Reading both databases directly, as a test checks what really committed."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from netsync.config import to_libpq_url
from tests.support import Sandbox


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(to_libpq_url(url))
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def outbox(sandbox: Sandbox, entity_id: str) -> list[dict[str, Any]]:
    """Every outbox row of one entity, oldest first, with its data decoded."""
    rows = await fetch(
        sandbox.services.response_url,
        "SELECT entity, version, op, data FROM outbox_events WHERE entity_id = $1 ORDER BY id",
        uuid.UUID(entity_id),
    )
    return [
        {**dict(r), "data": json.loads(r["data"]) if r["data"] is not None else None} for r in rows
    ]


async def synced(sandbox: Sandbox, table: str, entity_id: str) -> asyncpg.Record | None:
    """One row of a Request Network table (``synced_users``, ``synced_settings``, …)."""
    assert table in {"synced_users", "synced_settings", "synced_profile_types"}
    rows = await fetch(
        sandbox.services.request_url,
        f"SELECT * FROM {table} WHERE id = $1",  # noqa: S608 - table is one of three names
        uuid.UUID(entity_id),
    )
    return rows[0] if rows else None
