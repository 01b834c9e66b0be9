"""A snapshot's record lines checked and turned into rows, fast: orjson and the entity's own fast
check (``exchange.entities.Entity.row``; the pydantic models cost ten times more per record), each
entity's data as the values of its columns, in their order.

``importer.daemon.snapshots`` copies the rows into PostgreSQL; a refused line is an ``Invalid``
naming its record's number, and the whole file is refused with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from exchange.entities import ENTITIES, Invalid

_RECORD_KEYS = frozenset(
    {"event_id", "entity", "entity_id", "version", "op", "occurred_at", "correlation_id", "data"}
)
_MAX_VERSION = 2**31 - 1


def rows(entity_name: str, lines: list[bytes], first: int) -> list[tuple[Any, ...]]:
    """Parse and check record lines; ``Invalid`` names the first bad record's number."""
    check = ENTITIES[entity_name].row
    rows: list[tuple[Any, ...]] = []
    number = first
    try:
        for number, line in enumerate(lines, start=first):  # noqa: B007 - reported on error
            r = orjson.loads(line)
            if type(r) is not dict or not r.keys() <= _RECORD_KEYS:
                raise Invalid("a record is an object of the record fields")
            version = r["version"]
            if (
                r["entity"] != entity_name
                or r["op"] != "upsert"
                or type(version) is not int
                or not 1 <= version <= _MAX_VERSION
                or type(r["entity_id"]) is not str
                or type(r["event_id"]) is not str
                or type(r["data"]) is not dict
            ):
                raise Invalid(f"not a {entity_name} upsert")
            rows.append(
                (
                    r["entity_id"],
                    version,
                    r["event_id"],
                    datetime.fromisoformat(r["occurred_at"]),
                    *check(r["data"]),
                )
            )
    except (orjson.JSONDecodeError, Invalid, KeyError, TypeError, ValueError) as exc:
        raise Invalid(f"record {number}: {str(exc)[:200]}") from exc
    return rows
