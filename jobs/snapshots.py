"""Full snapshots of users, settings and profile types, in bounded memory at any size.

One REPEATABLE READ transaction reads the ``changes`` stream's last sequence number (the snapshot's
``changes_seq`` mark), counts the rows (the header announces the count) and streams them with
``COPY … TO STDOUT``: PostgreSQL renders each record as one JSON line and the writer hashes and
writes each chunk as it arrives, so a million rows cost a few MB of memory. The file is signed and
published atomically like every export, and ``latest/<stream>.jsonl`` names the newest one.

Sequence numbers come from ``export_streams`` under the stream's row lock, and each file is
recorded in ``export_files`` before it is written: a run that dies before publishing leaves its
number unpublished, and the next run publishes that number (with fresh content) instead of
leaving a hole. Every record of a snapshot carries the file's id as its ``event_id``: on the
Request side a row written by a snapshot points at the file that wrote it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import ResponseSession, ResponseSessionMaker
from app.outbox.models import ExportFile, ExportStream
from exchange.entities import ENTITIES
from exchange.format import CHANGES_STREAM, SNAPSHOT_STREAMS, generation_fields
from exchange.sealing import Recipients
from exchange.signing import Signer
from exchange.writer import ExportFileWriter
from jobs import numbering

_TAIL = """|| '","version":' || version::text || ',"op":"upsert","occurred_at":'
    || to_json(updated_at)::text || ',"data":{'"""


def snapshot_query(entity: str) -> str:
    """Each row as one record line, rendered by PostgreSQL from the entity's declaration
    (``exchange.entities``: ``to_json`` escapes strings, ``jsonb::text`` is JSON). ``$1`` is the
    constant start of every line."""
    declared = ENTITIES[entity]
    data = declared.snapshot_data()
    return f"SELECT $1 || id::text {_TAIL} || {data} || '}}}}' FROM {declared.source}"  # noqa: S608


@dataclass(frozen=True)
class SnapshotExport:
    stream: str
    seq: int
    file: str
    records: int
    changes_seq: int
    bytes: int

    def summary(self) -> dict[str, Any]:
        return self.__dict__.copy()


#: COPY hands over what the socket holds: while PostgreSQL renders rows more slowly than this
#: process takes them, that is 8 KiB at a time, and each piece costs a wake-up of the event loop
#: and of asyncpg's protocol (1 M rows: 23,000 pieces, about a second of this process's CPU on
#: the 2-core machine, which the sealing child and PostgreSQL itself wanted). Waiting a
#: millisecond after a small piece lets the socket gather about 100 KiB: a tenth of the pieces,
#: a third of the CPU, and no slower, since a wait only follows a piece the database was slower
#: to produce than this process to take (``docs/performance.md``).
_GATHER_BELOW = 64 << 10
_GATHER_SECONDS = 0.001


async def _gather(chunk: bytes) -> None:
    if len(chunk) < _GATHER_BELOW:
        await asyncio.sleep(_GATHER_SECONDS)


async def _allocate(session: ResponseSession, stream: str) -> ExportFile:
    """The next file of ``stream`` (an unpublished one left by a dead run first)."""
    row = await numbering.lock_stream(session, stream)
    leftover = await numbering.unpublished(session, stream)
    if leftover is not None and leftover.generation < row.generation:
        # numbered before a new generation began (a backup taken mid-snapshot): published now,
        # it would be superseded; it is given up for a file of the new generation
        leftover.published_at = datetime.now(UTC)
        leftover = None
    if leftover is not None:
        return leftover
    file = numbering.number_file(session, row, records=0)
    await session.flush()
    return file


async def export_snapshot(
    engine: AsyncEngine,
    sessions: ResponseSessionMaker,
    exports_dir: Path,
    signer: Signer,
    entity: str,
    *,
    recipients: Recipients | None,
    generations: numbering.GenerationWatch | None = None,
) -> SnapshotExport:
    """Write, sign and publish one snapshot of ``entity``; return what was published."""
    stream = SNAPSHOT_STREAMS[entity]
    if generations is not None:
        await generations.ensure()
    async with sessions() as session, session.begin():
        file = await _allocate(session, stream)
        seq, file_id = file.seq, file.file_id
        generation, since_seq = file.generation, file.since_seq
    table = ENTITIES[entity].source
    prefix = f'{{"event_id":"{file_id}","entity":"{entity}","entity_id":"'
    async with engine.connect() as conn:
        snapshot = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with snapshot.begin():
            await snapshot.execute(text("SET LOCAL TIME ZONE 'UTC'"))
            changes_seq = await snapshot.scalar(
                select(ExportStream.last_seq).where(ExportStream.stream == CHANGES_STREAM)
            )
            count = await snapshot.scalar(text(f"SELECT count(*) FROM {table}"))  # noqa: S608
            created_at = datetime.now(UTC)
            writer = ExportFileWriter(
                exports_dir,
                signer,
                recipients=recipients,
                stream=stream,
                seq=seq,
                kind="snapshot",
                file_id=file_id,
                created_at=created_at,
                records=int(count or 0),
                header={
                    "entity": entity,
                    "changes_seq": int(changes_seq or 0),
                    **generation_fields(generation, since_seq),
                },
            )

            failed: list[BaseException] = []

            async def sink(chunk: bytes) -> None:
                # Never raise into asyncpg's COPY: an exception from the output callback on the
                # last chunk leaves the connection waiting forever (the next statement, even the
                # ROLLBACK, never returns). Keep the first error, drop the rest of the stream.
                if failed:
                    return
                try:
                    writer.write_lines(chunk, chunk.count(b"\n"))
                except Exception as exc:  # e.g. OSError(ENOSPC): the exports disk is full
                    failed.append(exc)
                    return
                try:
                    await _gather(chunk)
                except asyncio.CancelledError as exc:  # a job timeout, a shutdown: raised
                    failed.append(exc)  # once the COPY has ended, never into it

            try:
                driver = (await snapshot.get_raw_connection()).driver_connection
                assert driver is not None
                # CSV with a quote and delimiter JSON never holds unescaped: lines arrive verbatim
                await driver.copy_from_query(
                    snapshot_query(entity),
                    prefix,
                    output=sink,
                    format="csv",
                    delimiter="\x02",
                    quote="\x01",
                )
                if failed:
                    raise failed[0]
                published = await asyncio.to_thread(writer.publish, latest_as=stream)
                if generations is not None:
                    await asyncio.to_thread(generations.mark, stream, generation, seq)
            except BaseException:
                writer.abort()
                raise
    async with sessions() as session, session.begin():
        row = await session.get(ExportFile, (stream, seq), with_for_update=True)
        assert row is not None
        row.published_at = datetime.now(UTC)
        row.sha256 = published.sha256
        row.records = published.records
        row.created_at = created_at
        now_in = await session.scalar(
            select(ExportStream.generation).where(ExportStream.stream == stream)
        )
    if generations is not None and now_in is not None and now_in > generation:
        # a generation began while this snapshot was read: the Request side will supersede a
        # file of the older one, so the state goes out again, numbered in the new generation
        return await export_snapshot(
            engine,
            sessions,
            exports_dir,
            signer,
            entity,
            recipients=recipients,
            generations=generations,
        )
    return SnapshotExport(
        stream, seq, published.name, published.records, int(changes_seq or 0), published.size
    )
