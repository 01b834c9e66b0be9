"""A snapshot's record lines checked and turned into rows, fast: orjson and small hand-written
checks of the record contract (the pydantic models cost ten times more per record), each
entity's data as the values of its columns (``importer.entities``), in their order.

``importer.snapshots`` copies the rows into PostgreSQL; a refused line is an ``Invalid`` naming
its record's number, and the whole file is refused with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from exchange.format import SETTING_KEY_PATTERN

_RECORD_KEYS = frozenset(
    {"event_id", "entity", "entity_id", "version", "op", "occurred_at", "correlation_id", "data"}
)
# the contract's pattern without anchors and capture, for fullmatch: twice as fast per record
_KEY_RE = re.compile(SETTING_KEY_PATTERN.strip("^$").replace("(", "(?:"))
_MAX_VERSION = 2**31 - 1


class Invalid(ValueError):
    pass


def _text(data: dict[str, Any], key: str, low: int, high: int, *, null: bool = False) -> str | None:
    value = data.get(key)
    if value is None and null:
        return None
    if type(value) is not str or not low <= len(value) <= high:
        raise Invalid(f"{key} must be a string of {low}-{high} characters")
    return value


def _setting(d: dict[str, Any]) -> tuple[Any, ...]:
    if not d.keys() <= {"key", "value", "description"} or "value" not in d:
        raise Invalid("setting data has key, value and description")
    key = _text(d, "key", 1, 200)
    if not _KEY_RE.fullmatch(key or ""):
        raise Invalid("key is not a dotted lowercase name")
    return key, orjson.dumps(d["value"]).decode(), _text(d, "description", 0, 2000, null=True)


def _user(d: dict[str, Any]) -> tuple[Any, ...]:
    allowed = {"username", "email", "password_hash", "role", "is_active", "profile_type_id"}
    if not d.keys() <= allowed:
        raise Invalid("unknown user field")
    if d.get("role") not in ("admin", "user") or type(d.get("is_active")) is not bool:
        raise Invalid("role is admin or user, is_active a boolean")
    return (
        _text(d, "username", 1, 150),
        _text(d, "email", 0, 320, null=True),
        _text(d, "password_hash", 20, 512),
        d["role"],
        d["is_active"],
        _text(d, "profile_type_id", 36, 36, null=True),
    )


def _profile_type(d: dict[str, Any]) -> tuple[Any, ...]:
    if not d.keys() <= {"name", "description", "permissions"}:
        raise Invalid("unknown profile type field")
    permissions = d.get("permissions", [])
    if type(permissions) is not list or not all(
        type(p) is str and 1 <= len(p) <= 100 for p in permissions
    ):
        raise Invalid("permissions is a list of names")
    return (
        _text(d, "name", 1, 100),
        _text(d, "description", 0, 2000, null=True),
        orjson.dumps(permissions).decode(),
    )


#: Per entity, its row check: the snapshot's data as the values of the entity's columns
#: (``importer.entities``), in their order.
ROW_CHECKS: dict[str, Callable[[dict[str, Any]], tuple[Any, ...]]] = {
    "setting": _setting,
    "user": _user,
    "profile_type": _profile_type,
}


def rows(entity_name: str, lines: list[bytes], first: int) -> list[tuple[Any, ...]]:
    """Parse and check record lines; ``Invalid`` names the first bad record's number."""
    check = ROW_CHECKS[entity_name]
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
