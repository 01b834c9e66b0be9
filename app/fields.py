"""Field types shared by the domains' schemas, and the paginated list shape.

Everything the API accepts ends up in PostgreSQL and, through the outbox, in a signed export file
that the Request Network validates again. Input that either of them would refuse must be refused
here, as a 422, instead of failing later as a 500 or a quarantined file:

- PostgreSQL ``text`` and ``jsonb`` refuse the NUL character, and a lone UTF-16 surrogate (which
  ``json.loads`` happily produces from ``"\\ud800"``) cannot be encoded for the wire at all;
- ``jsonb`` refuses ``NaN`` and ``Infinity`` (which ``json.loads`` also accepts), the export
  writer (orjson) refuses integers beyond 64 bits, and ``jsonb`` turns a float such as ``1e22``
  into exactly such an integer when it is read back.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

import orjson
from pydantic import AfterValidator, BaseModel, Field, JsonValue

from exchange.entities import check_number
from netsync.text import Text, clean_text

__all__ = ["MAX_JSON_BYTES", "Page", "StoredJson", "Text", "clean_json", "clean_text"]

#: Largest JSON value of a setting, serialised: settings are configuration, not documents.
MAX_JSON_BYTES = 64 * 1024
_MAX_DEPTH = 32


def _check_json(value: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"must not nest deeper than {_MAX_DEPTH} levels")
    if isinstance(value, str):
        clean_text(value)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int | float):
        check_number(value)  # the magnitudes jsonb and orjson keep as they are
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            clean_text(key)
            _check_json(item, depth + 1)


def clean_json(value: JsonValue) -> JsonValue:
    """Refuse JSON values that ``jsonb`` or the export files cannot carry faithfully."""
    _check_json(value, 0)
    if len(orjson.dumps(value)) > MAX_JSON_BYTES:
        raise ValueError(f"must be at most {MAX_JSON_BYTES} bytes as JSON")
    return value


StoredJson = Annotated[JsonValue, AfterValidator(clean_json)]

#: ``?limit=`` and ``?offset=`` bounds: small enough for one response, and far below the
#: 64-bit range PostgreSQL accepts, so no number a client sends can reach the database as an error.
MAX_LIMIT = 500
MAX_OFFSET = 1_000_000_000
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description="Page size.")]
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET, description="Items to skip.")]


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list, with the total number of matches for the client's pager."""

    items: list[T]
    total: int
    limit: int
    offset: int
