"""The batch driver every bulk import shares: rows in, batches written, one summary out.

Non-atomic imports commit every batch, so an interrupted import keeps what it did and a re-run
finishes it; while one batch is in the database the next is parsed (at most one of each), so
parsing here and writing in PostgreSQL use both cores. An atomic import is one transaction,
written batch after batch, and stops at ``MAX_ATOMIC_ROWS`` lines rather than hold more. Where
a domain has work to do before a batch is written (hashing plain passwords, tens of
milliseconds each), an atomic import reads its rows twice: the first reading checks every row
and does that work with no transaction open, keeping what it found (a hash per row, at most
``MAX_ATOMIC_ROWS`` of them); the second writes. So its transaction lasts as long as the
writing, not the hashing, and a bad row refuses the import before anything is written.

A domain (``app.users.bulk``, ``app.settings.bulk``, ``app.profile_types.bulk``) gives a
``Bulk``: the model of a row, an optional extra check, and how one batch is written. Writing a
batch is one statement over arrays plus one for its outbox rows
(``app.outbox.service.record_upserts``), in the order of the rows' keys, so two imports over
the same rows lock them in the same order.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import Executable

from app.db import ResponseSession
from app.imports.rows import MAX_LINE, CsvFields, Format, Record, RowError, records, validated
from app.outbox.service import record_upserts
from exchange.entities import Entity
from netsync.errors import InvalidInput, ServiceUnavailable

#: Opens a unit that commits on exit and rolls back on an error (``app.db.session_scope``).
Sessions = Callable[[], AbstractAsyncContextManager[ResponseSession]]
#: Rows per transaction (and per pair of statements); a row is a few hundred bytes.
BATCH = 2000
#: An atomic import is one transaction holding every row it wrote: it stops at this many lines.
MAX_ATOMIC_ROWS = 100_000
#: An atomic import's request body is held in a temporary file before its transaction opens:
#: at most this much (the containers' /tmp is 64 MiB).
MAX_ATOMIC_BYTES = 48 * 1024 * 1024
SPOOL_CHUNK = 256 * 1024
#: Errors listed in a summary; the count covers the rest.
MAX_ERRORS_LISTED = 100

M = TypeVar("M", bound=BaseModel)
#: Starts a reading of an import's records with their line numbers (``app.imports.rows.records``,
#: or a database's rows): an atomic import with work before its writing reads them twice.
Source = Callable[[], AsyncIterator[tuple[int, Record | RowError | None]]]
#: Starts a reading of an import's bytes (a request's body, a file, a spool of either).
Chunks = Callable[[], AsyncIterator[bytes]]


@dataclass
class ImportSummary:
    lines: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[RowError] = field(default_factory=list)

    def fail(self, line: int, error: str) -> None:
        self.failed += 1
        if len(self.errors) < MAX_ERRORS_LISTED:
            self.errors.append(RowError(line, error))

    def written(self, rows: int, versions: Sequence[int]) -> None:
        """A batch of ``rows`` wrote rows now at ``versions`` (1: created)."""
        created = sum(1 for v in versions if v == 1)
        self.created += created
        self.updated += len(versions) - created
        self.unchanged += rows - len(versions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "errors": [
                {"line": e.line, "error": e.error}
                for e in sorted(self.errors, key=lambda e: e.line)
            ],
        }


class ImportRefused(InvalidInput):
    """An atomic import met a bad row: nothing was kept."""

    code = "import_refused"


#: Writes one batch of (line, row) in the session and adds what it did to the summary;
#: ``update``: existing rows take the batch's values too. It answers the rows it refused
#: without writing them (one naming a profile type that does not exist), which the driver
#: treats as any bad row: reported, or the end of an atomic import.
WriteBatch = Callable[
    [ResponseSession, list[tuple[int, M]], ImportSummary, bool], Awaitable[list[RowError]]
]


@dataclass(frozen=True)
class Bulk(Generic[M]):
    """What a domain tells the driver: its row, an extra check, how a batch is written."""

    model: type[M]
    write: WriteBatch[M]
    #: A check beyond the model's (a password's policy): the reason a row is refused, or None.
    check: Callable[[M], str | None] = lambda _row: None
    #: A CSV record's text fields as the model reads them (booleans, JSON, lists).
    csv_fields: CsvFields = lambda record: record
    #: The longest line a row of this kind may need.
    max_line: int = MAX_LINE
    #: Rows per batch: fewer where a row may be large (two batches are held at a time).
    batch: int = BATCH
    #: Work on a batch before its transaction opens (hashing plain passwords), in sessions of
    #: its own; it leaves what it found on the rows.
    prepare: Callable[[Sessions, list[tuple[int, M]]], Awaitable[None]] | None = None
    #: What ``prepare`` left on a row (None: nothing), and how it is put back on the same row
    #: read again: an atomic import prepares all its rows before its transaction opens.
    carry: Callable[[M], Any] = lambda _row: None
    restore: Callable[[M, Any], None] = lambda _row, _found: None

    def reads_twice(self, atomic: bool) -> bool:
        """Whether an import reads its rows twice: atomic, with work before the writing."""
        return atomic and self.prepare is not None


async def run_import(
    bulk: Bulk[M],
    sessions: Sessions,
    source: Source,
    *,
    atomic: bool = False,
    update: bool = False,
    progress: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    """Import the records ``source`` reads (twice for an atomic import with a ``prepare``)."""
    summary = ImportSummary()

    def refuse(row: RowError) -> None:
        """A bad row: reported, or (atomic) the end of the import."""
        if atomic:
            raise ImportRefused(f"line {row.line}: {row.error}; nothing was imported")
        summary.fail(row.line, row.error)

    async def write(batch: list[tuple[int, M]], session: ResponseSession) -> None:
        """Write a prepared batch in ``session``."""
        for refused in await bulk.write(session, batch, summary, update):
            refuse(refused)
        if progress is not None:
            progress(summary)

    async def prepare(batch: list[tuple[int, M]]) -> None:
        if bulk.prepare is not None:
            await bulk.prepare(sessions, batch)

    async def write_alone(batch: list[tuple[int, M]]) -> None:
        await prepare(batch)
        async with sessions() as session:
            await write(batch, session)

    async def batches() -> AsyncIterator[list[tuple[int, M]]]:
        batch: list[tuple[int, M]] = []
        async for number, record in source():
            summary.lines = number
            if record is None:
                continue
            row = record if isinstance(record, RowError) else validated(bulk.model, number, record)
            if not isinstance(row, RowError) and (reason := bulk.check(row)) is not None:
                row = RowError(number, reason)
            if atomic and summary.lines > MAX_ATOMIC_ROWS:
                raise ImportRefused(
                    f"an atomic import holds one transaction: at most {MAX_ATOMIC_ROWS} rows;"
                    " import larger files without atomic (each batch commits; a re-run resumes)"
                )
            if isinstance(row, RowError):
                refuse(row)
                continue
            batch.append((number, row))
            if len(batch) >= bulk.batch:
                yield batch
                batch = []
        if batch:
            yield batch

    if atomic:
        found: dict[int, Any] = {}  # line → what prepare left on its row
        if bulk.reads_twice(atomic):
            async for batch in batches():
                await prepare(batch)
                for line, row in batch:
                    if (kept := bulk.carry(row)) is not None:
                        found[line] = kept
        async with sessions() as session:
            async for batch in batches():
                for line, row in batch:
                    if line in found:
                        bulk.restore(row, found.pop(line))
                await write(batch, session)
        return summary
    writing: asyncio.Task[None] | None = None
    try:
        async for batch in batches():
            if writing is not None:
                await writing  # one batch in the database at a time, in order
            writing = asyncio.create_task(write_alone(batch))
        if writing is not None:
            await writing
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writing
    return summary


class AtomicTooLarge(ImportRefused):
    status_code = 413
    code = "payload_too_large"


@contextlib.asynccontextmanager
async def spooled(chunks: AsyncIterator[bytes]) -> AsyncIterator[Chunks]:
    """The whole stream, held in a temporary file (bounded) and read back from it, as often as
    asked, until the block ends: the API's atomic imports read their body so, and their one
    transaction opens only once the body is in, so a slow client cannot hold it (nor the rows
    it locked) open while it sends; standard input is held so for a second reading. Where the
    temporary file cannot be written (a full ``/tmp``) the import is unavailable (503), not
    the client's fault."""
    spool: BinaryIO | None = None
    try:
        try:
            spool = held = await asyncio.to_thread(tempfile.TemporaryFile)
            size = 0
            async for chunk in chunks:
                size += len(chunk)
                if size > MAX_ATOMIC_BYTES:
                    raise AtomicTooLarge(
                        f"an atomic import is held whole first: at most {MAX_ATOMIC_BYTES} bytes;"
                        " import larger files without atomic (each batch commits; a re-run"
                        " resumes)"
                    )
                await asyncio.to_thread(held.write, chunk)
            await asyncio.to_thread(held.flush)
        except OSError as exc:
            raise ServiceUnavailable("no room to hold the import; try again later") from exc

        async def replay() -> AsyncIterator[bytes]:
            await asyncio.to_thread(held.seek, 0)
            while chunk := await asyncio.to_thread(held.read, SPOOL_CHUNK):
                yield chunk

        yield replay
    finally:
        if spool is not None:
            with contextlib.suppress(OSError):  # a full disk refuses the buffer's flush again
                spool.close()


async def import_stream(
    bulk: Bulk[M],
    sessions: Sessions,
    chunks: Chunks,
    fmt: Format,
    *,
    atomic: bool = False,
    update: bool = False,
    progress: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    """Import an NDJSON or CSV byte stream (a request's body, a file, standard input); an
    atomic import may start ``chunks`` twice (``spooled`` where the stream cannot be)."""
    return await run_import(
        bulk,
        sessions,
        lambda: records(chunks(), fmt, csv_fields=bulk.csv_fields, max_line=bulk.max_line),
        atomic=atomic,
        update=update,
        progress=progress,
    )


def latest_by(batch: list[tuple[int, M]], key: Callable[[M], str]) -> list[tuple[int, M]]:
    """The batch's (line, row), the last row of each key winning, in key order (the lock
    order)."""
    latest: dict[str, tuple[int, M]] = {}
    for line, row in batch:
        latest[key(row)] = (line, row)
    return [latest[k] for k in sorted(latest)]


def given(row: BaseModel, stored: Any | None, field: str) -> Any:
    """What an update writes in ``field``: the row's value where the row gives one (or the row
    is new), else the stored value (``stored``: the existing row, read ``FOR UPDATE``)."""
    if stored is None or field in row.model_fields_set:
        return getattr(row, field)
    return getattr(stored, field)


async def upsert_recorded(
    session: ResponseSession,
    statement: Executable,
    params: dict[str, Any],
    *,
    entity: Entity,
) -> list[int]:
    """Run a batch's upsert (``RETURNING`` the written rows' id, version and synced fields) and
    add their outbox rows, with the entity's declared payload, in the same transaction; the
    versions written (1: created)."""
    written = (await session.execute(statement, params)).all()
    await record_upserts(
        session, entity=entity.name, changes=[(r.id, r.version, entity.payload(r)) for r in written]
    )
    return [r.version for r in written]
