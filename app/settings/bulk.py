"""Settings imported in bulk (``netsync settings import``, ``POST /api/v1/settings/import``,
``netsync migrate-from-celery``): the previous deployment's configuration, by key.

A row is what ``POST /api/v1/settings`` accepts (``SettingCreate``: key, a JSON value, an
optional description), so whatever is imported is what the API could have written and what the
Request Network accepts. By default only new keys are written; with ``update`` an existing key
takes the row's value and the description it gives (a row without one keeps the stored one;
``"description": null`` clears it), and a row equal to what is stored writes nothing. Equal
means equal as JSON text after PostgreSQL's normalisation: key order does not count, ``1`` and
``1.0`` differ, as in ``app.settings.service``. In CSV the ``value`` column holds JSON text
(``"Acme"``, ``42``, ``true``, ``[1, 2]``).
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import BigInteger, Text, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB

from app.db import ResponseSession
from app.fields import MAX_JSON_BYTES
from app.imports.rows import Record, RowError
from app.imports.run import Bulk, ImportSummary, latest_by, upsert_recorded
from app.settings.schemas import SettingCreate
from exchange.entities import SETTING

#: A line holds a value of up to 64 KiB as JSON, its key and description: JSON's escapes can
#: make the value's text up to six times longer than its bytes, which is still bounded.
MAX_LINE = 6 * MAX_JSON_BYTES + 8 * 1024

_RETURNED = {
    "id": Uuid,
    "key": Text,
    "value": JSONB,
    "description": Text,
    "version": BigInteger,
}

#: The batch's rows as a table, into the entity's, on the key they match by; then what a
#: conflict does, then what comes back (typed, so ``value`` comes back as JSON).
_WRITE = """
    INSERT INTO settings AS s (id, key, value, description, version)
    SELECT gen_random_uuid(), key, value, description, 1 FROM unnest(
        CAST(:keys AS text[]), CAST(:values AS jsonb[]), CAST(:descriptions AS text[])
    ) AS t(key, value, description)
    ON CONFLICT (key)
"""
_RETURNING = " RETURNING s.id, s.key, s.value, s.description, s.version"

_INSERT = text(_WRITE + " DO NOTHING" + _RETURNING).columns(**_RETURNED)

_UPSERT = text(
    _WRITE
    + """ DO UPDATE SET
        value = excluded.value,
        description = excluded.description,
        version = s.version + 1,
        updated_at = now()
    WHERE (s.value::text, s.description)
        IS DISTINCT FROM (excluded.value::text, excluded.description)
    """
    + _RETURNING
).columns(**_RETURNED)


def csv_fields(record: Record) -> Record:
    """A CSV record as ``SettingCreate`` reads it: ``value`` is JSON text."""
    if "value" in record:
        try:
            record["value"] = orjson.loads(record["value"])
        except orjson.JSONDecodeError:
            raise ValueError('value: not JSON (a text is quoted: "Acme")') from None
    return record


async def write_batch(
    session: ResponseSession,
    batch: list[tuple[int, SettingCreate]],
    summary: ImportSummary,
    update: bool,
) -> list[RowError]:
    rows = [row for _, row in latest_by(batch, lambda s: s.key)]
    kept: dict[str, str | None] = {}
    if update:  # a row without a description keeps the stored one (locked, in key order)
        kept = dict(
            (
                await session.execute(
                    text(
                        "SELECT key, description FROM settings WHERE key = ANY(:keys)"
                        " ORDER BY key FOR UPDATE"
                    ),
                    {"keys": [s.key for s in rows if "description" not in s.model_fields_set]},
                )
            ).all()
        )
    params: dict[str, Any] = {
        "keys": [s.key for s in rows],
        "values": [orjson.dumps(s.value).decode() for s in rows],
        "descriptions": [kept.get(s.key, s.description) for s in rows],
    }
    statement = _UPSERT if update else _INSERT
    versions = await upsert_recorded(session, statement, params, entity=SETTING)
    summary.written(len(batch), versions)
    return []


#: A value may be 64 KiB: 250 of them are 16 MB of JSON a batch, where 2,000 could be 128 MB.
SETTINGS: Bulk[SettingCreate] = Bulk(
    SettingCreate, write_batch, csv_fields=csv_fields, max_line=MAX_LINE, batch=250
)
