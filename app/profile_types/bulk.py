"""Profile types imported in bulk (``netsync profile-types import``, ``POST
/api/v1/profile-types/import``, ``netsync migrate-from-celery``), matched by name.

A row is what ``POST /api/v1/profile-types`` accepts (``ProfileTypeCreate``: name, optional
description, permissions). Names match case-insensitively, as the unique index has it. By
default only new names are written; with ``update`` an existing profile type takes the row's
name (its spelling) and the description and permissions it gives (a field it leaves out keeps
its stored value), and a row equal to what is stored writes nothing. In CSV ``permissions`` is
one field of names separated by spaces.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import BigInteger, Text, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB

from app.db import ResponseSession
from app.imports.rows import Record, RowError
from app.imports.run import Bulk, ImportSummary, given, latest_by, upsert_recorded
from app.profile_types.schemas import ProfileTypeCreate
from exchange.entities import PROFILE_TYPE

_RETURNED = {
    "id": Uuid,
    "name": Text,
    "description": Text,
    "permissions": JSONB,
    "version": BigInteger,
}

#: The batch's rows as a table, into the entity's, on the name they match by; then what a
#: conflict does, then what comes back (typed, so ``permissions`` comes back as JSON).
_WRITE = """
    INSERT INTO profile_types AS p (id, name, description, permissions, version)
    SELECT gen_random_uuid(), name, description, permissions, 1 FROM unnest(
        CAST(:names AS text[]), CAST(:descriptions AS text[]), CAST(:permissions AS jsonb[])
    ) AS t(name, description, permissions)
    ON CONFLICT (lower(name))
"""
_RETURNING = " RETURNING p.id, p.name, p.description, p.permissions, p.version"

_INSERT = text(_WRITE + " DO NOTHING" + _RETURNING).columns(**_RETURNED)

_UPSERT = text(
    _WRITE
    + """ DO UPDATE SET
        name = excluded.name,
        description = excluded.description,
        permissions = excluded.permissions,
        version = p.version + 1,
        updated_at = now()
    WHERE (p.name, p.description, p.permissions)
        IS DISTINCT FROM (excluded.name, excluded.description, excluded.permissions)
    """
    + _RETURNING
).columns(**_RETURNED)


def csv_fields(record: Record) -> Record:
    """A CSV record as ``ProfileTypeCreate`` reads it: permissions separated by spaces."""
    if "permissions" in record:
        record["permissions"] = record["permissions"].split()
    return record


async def write_batch(
    session: ResponseSession,
    batch: list[tuple[int, ProfileTypeCreate]],
    summary: ImportSummary,
    update: bool,
) -> list[RowError]:
    # the names as PostgreSQL lowers them (the unique index's lower(), not Python's): two names
    # equal there are one profile type, and must not reach one statement twice
    folded = (
        await session.scalars(
            text("SELECT lower(n) FROM unnest(CAST(:names AS text[])) AS n"),
            {"names": [p.name for _, p in batch]},
        )
    ).all()
    keyed = {id(p): key for (_, p), key in zip(batch, folded, strict=True)}
    rows = [row for _, row in latest_by(batch, lambda p: keyed[id(p)])]
    stored: dict[str, Any] = {}
    if update:  # a field a row leaves out keeps its stored value (rows locked, in name order)
        stored = {
            r.key: r
            for r in await session.execute(
                text(
                    "SELECT lower(name) AS key, description, permissions FROM profile_types"
                    " WHERE lower(name) = ANY(:keys) ORDER BY lower(name) FOR UPDATE"
                ).columns(key=Text, description=Text, permissions=JSONB),
                {"keys": sorted(set(folded))},
            )
        }

    params: dict[str, Any] = {
        "names": [p.name for p in rows],
        "descriptions": [given(p, stored.get(keyed[id(p)]), "description") for p in rows],
        "permissions": [
            orjson.dumps(given(p, stored.get(keyed[id(p)]), "permissions")).decode() for p in rows
        ],
    }
    statement = _UPSERT if update else _INSERT
    versions = await upsert_recorded(session, statement, params, entity=PROFILE_TYPE)
    summary.written(len(batch), versions)
    return []


PROFILE_TYPES: Bulk[ProfileTypeCreate] = Bulk(ProfileTypeCreate, write_batch, csv_fields=csv_fields)
