"""Applying a snapshot: the whole state of one entity type, healing drift and lost files.

Two rules make a snapshot safe to apply at any time, in any order with the ``changes`` files:

* **Versions decide.** A snapshot row is written only where the Request side holds an older
  version (or nothing), exactly like an incremental change: a snapshot read before a change was
  made never overwrites that change. Generations come first: a snapshot of a newer generation
  (a restored Response database, ``jobs.numbering``) replaces any version of an older one.
* **Absence removes only what the snapshot knew about.** An entity missing from a complete
  snapshot is tombstoned (``deleted = true``) only if the last ``changes`` file that wrote it is at
  or below the snapshot's ``changes_seq`` mark (or a snapshot wrote it), or if it was written in
  an older generation (the restore undid it): anything created or changed after the snapshot was
  read stays. A snapshot older than one already applied on its stream is recorded and otherwise
  ignored, so a late file cannot undo a newer one.

A million-row snapshot is ~280 MB. Its lines are read in blocks, parsed with orjson and checked
against the record contract by the entity's own fast check (``importer.daemon.snapshot_rows``,
``exchange.entities.Entity.row``: the pydantic models cost ten times more per record), then
streamed with binary ``COPY`` into a typed temporary table and merged with one ``INSERT …
SELECT … ON CONFLICT … WHERE version < excluded.version``, all in the caller's transaction. The
file's signature was verified before any of this (``exchange.intake``): only a genuine file's
rows reach the database, and a genuine but malformed one rolls back as a whole.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
from sqlalchemy import CursorResult, func, select, text, tuple_, update
from sqlalchemy.exc import DBAPIError

from exchange.entities import ENTITIES, Entity, Invalid
from exchange.format import ExportHeader
from exchange.reader import RejectedFile, RejectReason, VerifiedStream
from importer.daemon import gaps
from importer.daemon.failures import DatabaseUnavailable, blames_the_file
from importer.daemon.ledger import claim
from importer.daemon.results import apply_results
from importer.daemon.snapshot_rows import rows
from importer.db import RequestSession
from importer.models import ImportLedger

#: Lines per ``COPY`` chunk: bounds memory (a few MB) while keeping round trips few.
BATCH_LINES = 20_000

_ROWS = "snapshot_rows"


@dataclass(frozen=True)
class StreamedResult:
    """What applying a streamed file did (``written``: rows inserted or updated)."""

    duplicate: bool
    stale: bool
    records: int
    written: int
    removed: int
    #: Set when another file holds this one's place in the ledger (``importer.daemon.ledger``).
    conflict: str | None = None
    #: Of an older generation than one already seen: nothing applied (``importer.daemon.ledger``).
    superseded: bool = False
    #: A newer generation of the Response database, first seen with this file.
    began: int | None = None


def _merge_sql(entity: Entity) -> str:
    names = ", ".join(entity.sql_columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in entity.sql_columns)
    return f"""
        INSERT INTO {entity.replica} AS t
            (id, generation, version, deleted, event_id, changed_at, applied_at,
             last_changes_seq, {names})
        SELECT id, :generation, version, false, event_id, changed_at, clock_timestamp(), NULL,
               {names}
        FROM {_ROWS}
        ON CONFLICT (id) DO UPDATE SET
            generation = excluded.generation, version = excluded.version, deleted = false,
            event_id = excluded.event_id, changed_at = excluded.changed_at,
            applied_at = excluded.applied_at, last_changes_seq = NULL, {updates}
        WHERE (t.generation, t.version) < (excluded.generation, excluded.version)
    """  # noqa: S608 - identifiers come from the fixed table above, values are parameters


def _tombstone_sql(entity: Entity) -> str:
    return f"""
        UPDATE {entity.replica} AS t
        SET deleted = true, generation = :generation, applied_at = clock_timestamp()
        WHERE NOT t.deleted
          AND (t.generation < :generation
               OR (t.generation = :generation
                   AND (t.last_changes_seq IS NULL OR t.last_changes_seq <= :changes_seq)))
          AND NOT EXISTS (SELECT 1 FROM {_ROWS} AS s WHERE s.id = t.id)
    """  # noqa: S608 - identifiers come from the fixed table above, values are parameters


async def _is_stale(session: RequestSession, header: ExportHeader) -> bool:
    newer = await session.scalar(
        select(func.max(ImportLedger.seq)).where(
            ImportLedger.stream == header.stream,
            tuple_(ImportLedger.generation, ImportLedger.seq) > tuple_(*header.place),
        )
    )
    return newer is not None


async def _record(session: RequestSession, header: ExportHeader, changes: int) -> None:
    await session.execute(
        update(ImportLedger)
        .where(
            ImportLedger.stream == header.stream,
            ImportLedger.generation == header.generation,
            ImportLedger.seq == header.seq,
        )
        .values(applied_changes=changes)
    )


async def _driver(session: RequestSession) -> asyncpg.Connection:
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


async def _create_rows_table(session: RequestSession, entity: Entity) -> None:
    columns = ", ".join(f"{name} {kind}" for name, kind in entity.sql_columns.items())
    await session.execute(
        text(
            f"CREATE TEMP TABLE {_ROWS} (id uuid NOT NULL, version int NOT NULL,"
            f" event_id uuid NOT NULL, changed_at timestamptz NOT NULL, {columns})"
            " ON COMMIT DROP"
        )
    )


async def _copy_rows(
    session: RequestSession,
    entity_name: str,
    batches: AsyncGenerator[list[tuple[Any, ...]], None],
) -> None:
    """One binary ``COPY`` per batch; the next batch is parsed (in a thread) meanwhile."""
    entity = ENTITIES[entity_name]
    await _create_rows_table(session, entity)
    driver = await _driver(session)
    columns = ["id", "version", "event_id", "changed_at", *entity.sql_columns]
    async with contextlib.aclosing(batches) as stream:
        async for batch in stream:
            await driver.copy_records_to_table(_ROWS, records=batch, columns=columns)


async def _stream_batches(
    export: VerifiedStream, entity_name: str
) -> AsyncGenerator[list[tuple[Any, ...]], None]:
    def next_batch() -> list[tuple[Any, ...]] | None:
        first = export.records_read + 1
        lines = export.record_lines(BATCH_LINES)
        if not lines:
            return None
        try:
            return rows(entity_name, lines, first)
        except Invalid as exc:
            raise RejectedFile(RejectReason.INVALID_SCHEMA, str(exc)) from exc

    pending = asyncio.ensure_future(asyncio.to_thread(next_batch))
    try:
        while (batch := await pending) is not None:
            pending = asyncio.ensure_future(asyncio.to_thread(next_batch))
            yield batch
    finally:
        # a thread cannot be cancelled: let it finish before anyone else reads the file
        with contextlib.suppress(Exception):
            await asyncio.shield(pending)


async def _merge(session: RequestSession, header: ExportHeader) -> tuple[int, int]:
    """Record the snapshot's mark, merge the rows (versions decide), remove what is gone.

    The mark goes first: ``heal_through`` takes the ``changes`` stream's lock, and applying a
    ``changes`` file takes it before touching rows too, so the two never wait on each other's
    rows in opposite order. A refusal below rolls the mark back with everything else.
    """
    # the header's validator guarantees both for snapshots
    assert header.entity is not None
    assert header.changes_seq is not None
    entity = ENTITIES[header.entity]
    generation, changes_seq = header.generation, header.changes_seq
    await gaps.heal_through(session, header.entity, changes_seq, generation=generation)
    try:
        await session.execute(text(f"ANALYZE {_ROWS}"))
        merged = cast(
            CursorResult[Any],
            await session.execute(text(_merge_sql(entity)), {"generation": generation}),
        )
        tombstoned = cast(
            CursorResult[Any],
            await session.execute(
                text(_tombstone_sql(entity)),
                {"changes_seq": changes_seq, "generation": generation},
            ),
        )
    except DBAPIError as exc:
        # an entity listed twice (ON CONFLICT cannot touch a row twice), a value the replica
        # refuses: the file's content; anything else is the database's, and retried
        if not blames_the_file(exc):
            raise
        detail = str(exc.orig)[:200] if exc.orig else "invalid record"
        raise RejectedFile(RejectReason.INVALID_SCHEMA, detail) from exc
    return int(merged.rowcount), int(tombstoned.rowcount)


async def apply_streamed(session: RequestSession, export: VerifiedStream) -> StreamedResult:
    """Apply a verified snapshot or results file, with its ledger row, in the caller's
    transaction (rolled back by the caller when this raises ``RejectedFile``)."""
    header = export.header
    found = await claim(session, [export])
    if not found.claimed:
        return StreamedResult(
            True,
            False,
            header.records,
            0,
            0,
            found.conflicts.get(header.seq),
            superseded=bool(found.superseded),
            began=found.began,
        )
    if header.kind == "results":
        written = await apply_results(session, export)
        await _record(session, header, written)
        return StreamedResult(False, False, header.records, written, 0, began=found.began)
    assert header.entity is not None  # the header's validator guarantees it for snapshots
    stale = await _is_stale(session, header)
    try:
        await _copy_rows(session, header.entity, _stream_batches(export, header.entity))
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
        # a value the column type refuses (class 22 or 23): the file's content
        raise RejectedFile(RejectReason.INVALID_SCHEMA, f"record: {str(exc)[:200]}") from exc
    except (ValueError, TypeError) as exc:  # the driver's encoder refused a value
        raise RejectedFile(RejectReason.INVALID_SCHEMA, f"record: {str(exc)[:200]}") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # cancelled, out of space, shut down …: the database's trouble, not the file's
        raise DatabaseUnavailable(repr(exc)[:300]) from exc
    written = removed = 0
    if not stale:
        written, removed = await _merge(session, header)
    await _record(session, header, written + removed)
    return StreamedResult(False, stale, header.records, written, removed, began=found.began)
