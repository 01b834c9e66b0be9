"""The rows of a users import, read from a stream: numbered lines (one held at a time, each
bounded), NDJSON or CSV, each checked by the API's rules for a user (``ImportedUser``).

A refused row becomes a ``RowError`` with its line number and a reason that never quotes the
row's values (a row may hold a password). ``app.users.bulk`` writes what passes.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from app.users.schemas import Password, Role, Username
from netsync.passwords import acceptable_hash

Format = Literal["ndjson", "csv"]
#: A line longer than this is a bad row, not a reason to hold megabytes.
MAX_LINE = 16 * 1024

_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_EMAIL = TypeAdapter(EmailStr)


@functools.lru_cache(maxsize=4096)
def _domain(domain: str) -> str:
    """The API's verdict (pydantic's ``EmailStr``, i.e. email_validator) on one domain, and its
    normal form: asked once per domain, where it costs most (IDNA), not once per row."""
    return _EMAIL.validate_python("a@" + domain).rpartition("@")[2]


def import_email(value: str) -> str:
    """``EmailStr``'s answer, fast for the common case: a plain ASCII address whose domain was
    seen before costs a regex. Anything else (quoted or non-ASCII local parts, display names,
    lengths near the limits, a domain refused) goes through ``EmailStr`` itself, so the answer
    and the normal form are always the API's."""
    local, at, domain = value.rpartition("@")
    if at and len(local) <= 64 and len(value) <= 254 and _LOCAL_PART.match(local):
        try:
            return f"{local}@{_domain(domain)}"
        except ValidationError:
            pass
    return _EMAIL.validate_python(value)


class ImportedUser(BaseModel):
    """One row: the API's rules for a user, with a hash allowed instead of a password."""

    model_config = ConfigDict(extra="forbid")

    username: Username
    email: Annotated[str, AfterValidator(import_email)] | None = None
    password: Password | None = None
    password_hash: str | None = None
    role: Role = "user"
    is_active: bool = True

    @model_validator(mode="after")
    def _one_secret(self) -> ImportedUser:
        if (self.password is None) == (self.password_hash is None):
            raise ValueError("give exactly one of password and password_hash")
        if self.password_hash is not None and not acceptable_hash(self.password_hash):
            raise ValueError(
                "password_hash is not a bcrypt ($2a$/$2b$/$2y$, cost 4 to 14) or argon2"
                " (v=19, m <= 256 MiB, t <= 10, p <= 4) hash"
            )
        return self


@dataclass(frozen=True)
class RowError:
    line: int
    error: str


def _explain(exc: ValidationError) -> str:
    """Pydantic's messages without the values (a row may hold a password)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'row'}: {err['msg']}" for err in exc.errors()
    )


def parse(line: int, row: Any) -> ImportedUser | RowError:
    if not isinstance(row, dict):
        return RowError(line, "a row is an object of fields")
    try:
        return ImportedUser.model_validate(row)
    except ValidationError as exc:
        return RowError(line, _explain(exc))


async def lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes | None]]:
    """Numbered lines of a byte stream, holding at most one line (``None``: too long)."""
    pending = bytearray()
    number = 0
    overlong = False
    async for chunk in chunks:
        pending += chunk
        while True:
            end = pending.find(b"\n")
            if end < 0:
                if len(pending) > MAX_LINE:
                    overlong = True
                    pending.clear()
                break
            number += 1
            yield number, None if overlong or end > MAX_LINE else bytes(pending[:end])
            overlong = False
            del pending[: end + 1]
    if pending or overlong:
        number += 1
        yield number, None if overlong or len(pending) > MAX_LINE else bytes(pending)


async def rows(
    chunks: AsyncIterator[bytes], fmt: Format
) -> AsyncIterator[tuple[int, ImportedUser | RowError | None]]:
    """Parsed rows with their line numbers; ``None`` for a blank line (or CSV's header)."""
    header: list[str] | None = None
    async for number, raw in lines(chunks):
        if raw is None:
            yield number, RowError(number, f"line longer than {MAX_LINE} bytes")
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
                yield number, parse(number, orjson.loads(decoded))
            except orjson.JSONDecodeError:
                yield number, RowError(number, "not a JSON object")
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
        record: dict[str, Any] = {k: v for k, v in zip(header, fields, strict=True) if v != ""}
        if "is_active" in record:
            record["is_active"] = record["is_active"].strip().lower() in ("true", "1", "yes")
        yield number, parse(number, record)
