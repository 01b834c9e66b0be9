"""The rows of an import, read from a stream: numbered lines (one held at a time, each bounded),
NDJSON or CSV, each checked by a domain's model of a row.

A refused row becomes a ``RowError`` with its line number and a reason that never quotes the
row's values (a users row may hold a password). The same records come from a database
(``netsync migrate-from-celery``), numbered by row, so both sources meet the same checks.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

Format = Literal["ndjson", "csv"]
#: What a line may hold unless a domain says otherwise: a bad row, not a reason to hold megabytes.
MAX_LINE = 16 * 1024

#: A raw record: a row's fields by name, before its model has seen them.
Record = dict[str, Any]
#: Turns one CSV record's text fields into what the model reads (booleans, JSON, lists).
CsvFields = Callable[[Record], Record]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class RowError:
    line: int
    error: str


def explain(exc: ValidationError, fields: Iterable[str]) -> str:
    """Pydantic's messages without the values (a row may hold a password), and without the
    names of fields the model does not have: those come from the input too (a CSV without a
    header row makes its first row's values the names)."""
    known = set(fields)

    def where(loc: tuple[int | str, ...]) -> str:
        if loc and loc[0] not in known:
            return "a field that is not one of " + ", ".join(sorted(known))
        return ".".join(str(p) for p in loc) or "row"

    return "; ".join(f"{where(err['loc'])}: {err['msg']}" for err in exc.errors())


def validated(model: type[M], line: int, record: Any) -> M | RowError:
    """``record`` as ``model`` has it, or why not."""
    if not isinstance(record, dict):
        return RowError(line, "a row is an object of fields")
    try:
        return model.model_validate(record)
    except ValidationError as exc:
        return RowError(line, explain(exc, model.model_fields))


async def lines(
    chunks: AsyncIterator[bytes], max_line: int = MAX_LINE
) -> AsyncIterator[tuple[int, bytes | None]]:
    """Numbered lines of a byte stream, holding at most one line (``None``: too long)."""
    pending = bytearray()
    number = 0
    overlong = False
    async for chunk in chunks:
        pending += chunk
        while True:
            end = pending.find(b"\n")
            if end < 0:
                if len(pending) > max_line:
                    overlong = True
                    pending.clear()
                break
            number += 1
            yield number, None if overlong or end > max_line else bytes(pending[:end])
            overlong = False
            del pending[: end + 1]
    if pending or overlong:
        number += 1
        yield number, None if overlong or len(pending) > max_line else bytes(pending)


async def records(
    chunks: AsyncIterator[bytes],
    fmt: Format,
    *,
    csv_fields: CsvFields,
    max_line: int = MAX_LINE,
) -> AsyncIterator[tuple[int, Record | RowError | None]]:
    """Records with their line numbers; ``None`` for a blank line (or CSV's header).

    CSV's empty fields are absent fields (a spreadsheet cannot write ``null``)."""
    header: list[str] | None = None
    async for number, raw in lines(chunks, max_line):
        if raw is None:
            yield number, RowError(number, f"line longer than {max_line} bytes")
            continue
        if not raw.strip():
            yield number, None
            continue
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark, as spreadsheets write
        try:
            decoded = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            yield number, RowError(number, "not UTF-8")
            continue
        if fmt == "ndjson":
            try:
                value = orjson.loads(decoded)
            except orjson.JSONDecodeError:
                yield number, RowError(number, "not a JSON object")
                continue
            ok = isinstance(value, dict)
            yield number, value if ok else RowError(number, "a row is an object of fields")
            continue
        try:
            # strict: an unterminated quote is a bad row, not a field cut at the line's end
            fields = next(csv.reader(io.StringIO(decoded), strict=True))
        except (csv.Error, StopIteration):
            yield number, RowError(number, "not a CSV row")
            continue
        if header is None:
            header = [f.strip() for f in fields]
            yield number, None
            continue
        if len(fields) != len(header):
            yield number, RowError(number, f"{len(fields)} fields, the header has {len(header)}")
            continue
        record = {k: v for k, v in zip(header, fields, strict=True) if v != ""}
        try:
            yield number, csv_fields(record)
        except ValueError as exc:
            yield number, RowError(number, str(exc))


_YES = ("true", "1", "yes", "y", "t", "on")
_NO = ("false", "0", "no", "n", "f", "off")


def csv_bool(value: str) -> bool:
    """A spreadsheet's yes/no (``true``/``false``, ``1``/``0``, ``yes``/``no``… any case);
    anything else is a bad row, never a silent false."""
    word = value.strip().lower()
    if word not in _YES + _NO:
        raise ValueError("a yes/no field holds neither (true/false, 1/0, yes/no)")
    return word in _YES
