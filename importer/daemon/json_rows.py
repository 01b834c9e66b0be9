"""Rows sent to PostgreSQL as one JSON text, read there by ``json_to_recordset``.

A batch of rows (a ``changes`` batch, a ``results`` file's block) goes as a single text
parameter that PostgreSQL parses in C. Typed arrays per column cost asyncpg an encoding call and
an ``isinstance`` against an ABC for every value, three times the importer's CPU for a batch;
a multi-row ``VALUES`` costs SQLAlchemy more still (``docs/performance.md``).

Two things differ from what asyncpg did with the same values, and are put back here: a JSON
null arrives as SQL NULL where the driver stored the JSON null (``columns``), and a time is
written as given where the driver converted it to UTC first (``utc``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime


def columns(declared: Mapping[str, str], param: str = "rows") -> tuple[str, str]:
    """For columns and their SQL types: the select list, and the ``FROM`` source reading the
    JSON array of objects in parameter ``param``."""
    selected = ", ".join(
        f"coalesce({c}, 'null')" if kind == "jsonb" else c for c, kind in declared.items()
    )
    types = ", ".join(f"{c} {kind}" for c, kind in declared.items())
    return selected, f"json_to_recordset(CAST(:{param} AS json)) AS r({types})"


def utc(moment: datetime) -> datetime:
    """A time as asyncpg encodes it: in UTC, a naive one taken as local time. One beyond year
    9999 in UTC is an ``OverflowError`` here, the file's fault, not a row no driver can read
    back."""
    return moment.astimezone(UTC)
