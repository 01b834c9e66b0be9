"""The previous deployment's tables (FastAPI + Celery), read as import records.

``netsync migrate-from-celery`` reads them straight from that deployment's PostgreSQL and hands
each row to the same checks and batch writes as a file import (``app.imports``), so a row the
API would refuse is refused here too, with its number. The tables it expects, in one schema
(``public`` unless told), are documented in ``docs/operations.md`` ("Moving off the Celery
deployment"); columns beyond these are ignored, a missing optional column takes its default:

* ``profile_types``: ``name``; optional ``description``, ``permissions`` (a JSON array or a
  ``text[]``);
* ``settings``: ``key``, ``value`` (``json``/``jsonb``, or text read as JSON where it parses as
  JSON and as a string where it does not); optional ``description``;
* ``users``: ``username``, the hash as ``hashed_password`` (or ``password_hash``); optional
  ``email``, ``is_active``, the role as ``role`` (``admin``/``user``) or ``is_superuser``, and
  ``profile_type_id`` (the old ``profile_types.id``, carried over by the profile type's name).

Everything is read in one read-only, repeatable-read transaction, so the three tables are one
moment of the old database even while it is still in use; rows come through a server-side
cursor in a stable order (by name, key, username), so a refused row's number finds it again.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from app.imports.rows import Record, RowError
from app.settings.bulk import MAX_LINE as SETTING_LINE

#: Rows fetched per round trip of the cursor: with ``MAX_ROW_BYTES``, what one round trip may
#: hold in memory (about 100 MiB at worst, a few hundred KiB for real rows).
PREFETCH = 250
#: The largest row read (its fields' text, where it is): as long as a settings import file's
#: line may be, well above the largest row the checks accept (a setting's value may be 64 KiB
#: of JSON, however it is indented or escaped in the old column).
MAX_ROW_BYTES = SETTING_LINE
#: The column that carries a row's size (never a field of the record).
ROW_BYTES = "netsync_row_bytes"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class LegacySchemaError(Exception):
    """The old database lacks a table or a column the migration needs; the message says which."""


@dataclass(frozen=True)
class Kind:
    table: str
    #: The column rows are ordered by (and that a refused row's number counts along).
    order: str
    required: tuple[str, ...]


PROFILE_TYPES = Kind("profile_types", "name", ("name",))
SETTINGS = Kind("settings", "key", ("key", "value"))
USERS = Kind("users", "username", ("username",))
KINDS = (PROFILE_TYPES, SETTINGS, USERS)


def quoted(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise LegacySchemaError(f"{name!r} is not a plain SQL identifier")
    return f'"{name}"'


async def columns(conn: asyncpg.Connection, schema: str, table: str) -> dict[str, str]:
    """The table's columns and their types (``udt_name``: jsonb, text, _text, bool…)."""
    rows = await conn.fetch(
        "SELECT column_name, udt_name FROM information_schema.columns"
        " WHERE table_schema = $1 AND table_name = $2",
        schema,
        table,
    )
    return {r["column_name"]: r["udt_name"] for r in rows}


def select(kind: Kind, schema: str, found: dict[str, str]) -> str:
    """The query that reads ``kind`` as import records, from the columns the table has."""
    if not found:
        raise LegacySchemaError(f"no table {schema}.{kind.table}")
    missing = [c for c in kind.required if c not in found]
    if kind is USERS and not {"hashed_password", "password_hash"} & found.keys():
        missing.append("hashed_password")
    if missing:
        raise LegacySchemaError(f"{schema}.{kind.table} has no column {', '.join(missing)}")
    fields = {c: f"t.{quoted(c)}" for c in kind.required if c != "value"}
    if kind is SETTINGS:
        fields["value"] = 't."value"::text'
    optional = {
        PROFILE_TYPES: ("description", "permissions"),
        SETTINGS: ("description",),
        USERS: ("email", "is_active", "role"),
    }[kind]
    fields |= {c: f"t.{quoted(c)}" for c in optional if c in found and c != "permissions"}
    if "permissions" in optional and "permissions" in found:
        cast = "" if found["permissions"].startswith("_") else "::text"
        fields["permissions"] = f't."permissions"{cast}'
    join = ""
    if kind is USERS:
        hash_column = "hashed_password" if "hashed_password" in found else "password_hash"
        fields["password_hash"] = f"t.{quoted(hash_column)}"
        if "role" not in found and "is_superuser" in found:
            fields["role"] = "CASE WHEN t.is_superuser THEN 'admin' ELSE 'user' END"
        if "profile_type_id" in found:
            fields["profile_type"] = "p.name"
            join = (
                f" LEFT JOIN {quoted(schema)}.{quoted(PROFILE_TYPES.table)} AS p"
                " ON p.id = t.profile_type_id"
            )
    # A row is measured where it is, field by field in the text it is read as, and only one of
    # at most MAX_ROW_BYTES leaves the old database: a prefetch of rows holding megabytes each
    # never reaches this process's memory. OFFSET 0 keeps each level from being folded into
    # the next (the planner would otherwise compute the fields and the size once per use).
    inner = ", ".join(f"{expr} AS {quoted(name)}" for name, expr in fields.items())
    size = " + ".join(f"coalesce(octet_length(s.{quoted(name)}::text), 0)" for name in fields)
    capped = ", ".join(
        f"CASE WHEN q.{ROW_BYTES} <= {MAX_ROW_BYTES} THEN q.{quoted(name)} END AS {quoted(name)}"
        for name in fields
    )
    # every name in it is one of ours or passed through quoted(), which allows only plain
    # identifiers: nothing of the caller's reaches the SQL unchecked
    read = f"SELECT {inner} FROM {quoted(schema)}.{quoted(kind.table)} AS t{join} OFFSET 0"  # noqa: S608
    measured = f"SELECT s.*, {size} AS {ROW_BYTES} FROM ({read}) AS s OFFSET 0"  # noqa: S608
    order = quoted(kind.order)
    return f"SELECT {capped}, q.{ROW_BYTES} FROM ({measured}) AS q ORDER BY q.{order}"  # noqa: S608


def record(kind: Kind, row: asyncpg.Record, found: dict[str, str]) -> Record:
    """One row as an import record: NULLs are absent fields, JSON text decoded."""
    fields: dict[str, Any] = {k: v for k, v in row.items() if v is not None and k != ROW_BYTES}
    if kind is SETTINGS and "value" in fields:
        text = fields["value"]
        try:
            fields["value"] = orjson.loads(text)
        except orjson.JSONDecodeError:
            if found["value"] in ("json", "jsonb"):
                raise
            fields["value"] = text  # a plain text column holding a plain string
    if kind is PROFILE_TYPES and isinstance(fields.get("permissions"), str):
        fields["permissions"] = orjson.loads(fields["permissions"])
    return fields


@dataclass(frozen=True)
class Reading:
    """How one kind is read from the old database: its query and the table's columns."""

    kind: Kind
    query: str
    found: dict[str, str]


async def check(conn: asyncpg.Connection, kind: Kind, schema: str) -> Reading:
    """How ``kind`` is read, once its query ran here (with ``LIMIT 0``), else
    ``LegacySchemaError``: a column of the wrong type (an ``is_superuser`` that is not a
    boolean, a ``profile_type_id`` that is not the old ``profile_types.id``'s type) stops the
    migration before anything is written, not half-way."""
    found = await columns(conn, schema, kind.table)
    query = select(kind, schema, found)
    try:
        async with conn.transaction():  # a savepoint: the snapshot's transaction goes on
            await conn.fetch(query + " LIMIT 0")
    except asyncpg.PostgresError as exc:
        raise LegacySchemaError(f"{schema}.{kind.table} cannot be read: {exc}") from exc
    return Reading(kind, query, found)


async def rows(
    conn: asyncpg.Connection, reading: Reading
) -> AsyncIterator[tuple[int, Record | RowError | None]]:
    """The rows ``check`` found readable, numbered from 1 in the table's order, in the caller's
    transaction."""
    number = 0
    async for row in conn.cursor(reading.query, prefetch=PREFETCH):
        number += 1
        if row[ROW_BYTES] > MAX_ROW_BYTES:  # its fields never left the old database
            yield number, RowError(number, f"row longer than {MAX_ROW_BYTES} bytes")
            continue
        try:
            yield number, record(reading.kind, row, reading.found)
        except orjson.JSONDecodeError:
            yield number, RowError(number, "a column read as JSON holds text that is not JSON")
