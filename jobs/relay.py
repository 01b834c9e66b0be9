"""The outbox relay: turns committed outbox rows into published export files.

Two steps per file, so that a crash anywhere loses nothing and duplicates nothing:

1. *Allocate*: one statement takes the pending rows (oldest first, ``SKIP LOCKED`` so concurrent
   relays take disjoint rows), bumps the stream's sequence number under its row lock, records the
   file as unpublished and stamps the rows with its number. After it commits, the file's content
   is fixed: exactly the outbox rows that carry its number.
2. *Publish*: write the file from those rows, rename it into the exports directory, mark it
   published.

A crash after (1) leaves an unpublished file that the sweeper publishes (``publish_pending``,
which locks such files so relays share them); a crash after the rename but before the mark
publishes the same file again, which the importer recognises by its ledger. The fast path of a
sync job is two round trips to PostgreSQL and one file write.
Pending rows are found by ``export_seq IS NULL``, never by ``id > last``, so a row whose
transaction commits late is never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import ResponseSession, ResponseSessionMaker
from app.outbox.models import ExportFile, OutboxEvent
from exchange.format import CHANGES_STREAM, generation_fields
from exchange.sealing import Recipients
from exchange.signing import Signer
from exchange.writer import PublishedFile, publish_export
from jobs.numbering import ALLOCATE_CHANGES, ENSURE_STREAM, GenerationWatch
from netsync import metrics
from netsync.logging import correlation_id

#: Built once: constructing the ORM ``update`` each time cost the worker's loop 0.4 ms a file.
_MARK_PUBLISHED = text(
    f"UPDATE {ExportFile.__tablename__} SET published_at = :at, sha256 = :sha256"  # noqa: S608
    " WHERE stream = :stream AND seq = :seq"
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Allocation:
    """A file whose content is fixed and durable, not yet written."""

    seq: int
    file_id: uuid.UUID
    created_at: datetime
    events: list[OutboxEvent]
    #: The generation it was numbered in and its stream's base there (``jobs.numbering``).
    generation: int = 0
    since_seq: int = 0

    def holds(self, event_id: uuid.UUID) -> bool:
        return any(e.event_id == event_id for e in self.events)


@dataclass
class Resent:
    files: list[PublishedFile] = field(default_factory=list)
    #: Numbers not allocated on this stream (beyond its last file, a typo, or pruned past the
    #: retention together with their rows).
    unknown: list[int] = field(default_factory=list)
    #: Files whose outbox rows are no longer all there: not published (never fewer records).
    incomplete: list[int] = field(default_factory=list)


class ResendIncomplete(Exception):
    """A file's rows are no longer all in the outbox: resending it would lose changes."""

    def __init__(self, seq: int, expected: int, found: int) -> None:
        super().__init__(
            f"file {seq} held {expected} changes, the outbox keeps {found} of them: "
            "resend refused (a snapshot export carries the current state instead)"
        )
        self.seq = seq


@dataclass(frozen=True)
class RelayResult:
    files: list[PublishedFile]
    events: int


def _record(event: OutboxEvent) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": str(event.event_id),
        "entity": event.entity,
        "entity_id": str(event.entity_id),
        "version": event.version,
        "op": event.op,
        "occurred_at": event.created_at.isoformat(),
        "correlation_id": event.correlation_id,
    }
    if event.data is not None:
        record["data"] = event.data
    return record


class OutboxRelay:
    def __init__(
        self,
        sessions: ResponseSessionMaker,
        exports_dir: Path,
        signer: Signer,
        *,
        recipients: Recipients | None,
        batch_size: int = 1000,
        max_file_bytes: int = 4 * 1024 * 1024,
        stream: str = CHANGES_STREAM,
        generations: GenerationWatch | None = None,
    ) -> None:
        self.sessions = sessions
        #: Checks for a restored database before this process numbers its first file.
        self.generations = generations
        self.exports_dir = exports_dir
        self.signer = signer
        self.recipients = recipients
        self.batch_size = batch_size
        self.max_file_bytes = max_file_bytes
        self.stream = stream
        self._stream_ready = False

    @property
    def _engine(self) -> AsyncEngine:
        engine: AsyncEngine = self.sessions.kw["bind"]
        return engine

    async def allocate(self) -> Allocation | None:
        """Give the oldest pending changes the next sequence number; ``None`` if none wait."""
        if self.generations is not None:
            await self.generations.ensure()
        async with self._autocommit() as conn:
            return await self._allocate(conn)

    @contextlib.asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")

    async def _allocate(self, conn: AsyncConnection) -> Allocation | None:
        if not self._stream_ready:
            await conn.execute(ENSURE_STREAM, {"stream": self.stream})
            self._stream_ready = True
        file_id, created_at = uuid.uuid4(), datetime.now(UTC)
        rows = (
            await conn.execute(
                ALLOCATE_CHANGES,
                {
                    "batch": self.batch_size,
                    "max_bytes": self.max_file_bytes,
                    "stream": self.stream,
                    "file_id": file_id,
                    "created_at": created_at,
                },
            )
        ).all()
        if not rows:
            return None
        events = [
            OutboxEvent(
                id=r.id,
                event_id=r.event_id,
                entity=r.entity,
                entity_id=r.entity_id,
                version=r.version,
                op=r.op,
                data=r.data,
                correlation_id=r.correlation_id,
                created_at=r.created_at,
            )
            for r in sorted(rows, key=lambda r: r.id)
        ]
        first = rows[0]
        return Allocation(first.seq, file_id, created_at, events, first.generation, first.since_seq)

    async def publish_next(self) -> tuple[Allocation, PublishedFile] | None:
        """Allocate the next file, write it and mark it published. The mark takes a connection
        of its own, pinged as it leaves the pool: one the server dropped during the write is
        replaced there, where a held one would fail the mark after the rename and the job's
        retry would publish the file a second time; and no connection waits on the disk."""
        allocation = await self.allocate()
        if allocation is None:
            return None
        return allocation, await self._publish_allocation(allocation)

    async def _write(
        self,
        seq: int,
        file_id: uuid.UUID,
        created_at: datetime,
        events: Sequence[OutboxEvent],
        *,
        generation: int,
        since_seq: int,
        mark: bool = False,
    ) -> PublishedFile:
        def write() -> PublishedFile:
            published = publish_export(
                self.exports_dir,
                self.signer,
                recipients=self.recipients,
                stream=self.stream,
                seq=seq,
                kind="changes",
                file_id=file_id,
                created_at=created_at,
                records=[_record(e) for e in events],
                header=generation_fields(generation, since_seq),
            )
            if mark and self.generations is not None:
                self.generations.mark(self.stream, generation, seq)
            return published

        published = await asyncio.to_thread(write)
        metrics.EXPORT_CHANGES.inc(published.records)
        log.info(
            "published export file",
            extra={
                "file": published.name,
                "records": published.records,
                # one grep for a request id finds the file that carried its change
                "correlation_ids": sorted({e.correlation_id for e in events if e.correlation_id}),
            },
        )
        return published

    async def _publish_allocation(self, allocation: Allocation) -> PublishedFile:
        """Write a freshly allocated file and mark it published (one more round trip)."""
        published = await self._write(
            allocation.seq,
            allocation.file_id,
            allocation.created_at,
            allocation.events,
            generation=allocation.generation,
            since_seq=allocation.since_seq,
            mark=True,
        )
        mark = {
            "stream": self.stream,
            "seq": allocation.seq,
            "at": datetime.now(UTC),
            "sha256": published.sha256,
        }
        async with self._autocommit() as conn:
            await conn.execute(_MARK_PUBLISHED, mark)
        return published

    async def _publish(self, session: ResponseSession, file: ExportFile) -> PublishedFile:
        """Write a file that was allocated earlier, from its rows, inside the caller's lock."""
        events: Sequence[OutboxEvent] = (
            await session.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.export_stream == file.stream, OutboxEvent.export_seq == file.seq)
                .order_by(OutboxEvent.id)
            )
        ).all()
        if len(events) != file.records:  # rows pruned since: never publish less under its id
            raise ResendIncomplete(file.seq, file.records, len(events))
        published = await self._write(
            file.seq,
            file.file_id,
            file.created_at,
            events,
            generation=file.generation,
            since_seq=file.since_seq,
        )
        file.published_at = datetime.now(UTC)
        file.sha256 = published.sha256
        return published

    async def publish_pending(self) -> list[PublishedFile]:
        """Publish every unpublished file that no other relay is publishing right now (the
        leftovers of a relay that died between allocating and publishing)."""
        published: list[PublishedFile] = []
        async with self.sessions() as session, session.begin():
            query = (
                select(ExportFile)
                .where(ExportFile.stream == self.stream, ExportFile.published_at.is_(None))
                .order_by(ExportFile.seq)
                .with_for_update(skip_locked=True)
            )
            for file in (await session.scalars(query)).all():
                published.append(await self._publish(session, file))
        return published

    async def publish_file(self, seq: int) -> PublishedFile | None:
        """Publish one file unless it already is; ``None`` if it was published."""
        async with self.sessions() as session, session.begin():
            file = await session.get(ExportFile, (self.stream, seq), with_for_update=True)
            if file is None or file.published_at is not None:
                return None
            return await self._publish(session, file)

    async def resend(self, first: int, last: int) -> Resent:
        """Publish files ``first`` to ``last`` again, from the rows that fixed their content:
        the same file id and records (in new ciphertext), for files the carrier lost. The
        importer applies the ones it lacks and archives the rest as duplicates. A number never
        allocated, or whose rows are gone, is reported, not invented."""
        resent = Resent()
        for seq in range(first, last + 1):
            async with self.sessions() as session, session.begin():
                file = await session.get(ExportFile, (self.stream, seq), with_for_update=True)
                if file is None:
                    resent.unknown.append(seq)
                    continue
                try:
                    resent.files.append(await self._publish(session, file))
                except ResendIncomplete:
                    resent.incomplete.append(seq)
        return resent

    async def run(self) -> RelayResult:
        """The sweeper: look for a restored database, publish leftovers, then allocate and
        publish until nothing is pending."""
        if self.generations is not None:
            await self.generations.check()
        files = await self.publish_pending()
        while (next_file := await self.publish_next()) is not None:
            files.append(next_file[1])
        return RelayResult(files, sum(f.records for f in files))

    async def export_event(self, event_id: uuid.UUID) -> dict[str, Any]:
        """Make sure one event's file is published: the work and the result of its sync job.

        The fast path is two round trips and a file write: allocate (taking this event and any
        other pending ones), write the file, mark it published. When another relay took the
        event, wait briefly for it to publish, then publish it here if it has not.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 10.0
        while loop.time() < give_up:
            while (next_file := await self.publish_next()) is not None:
                allocation, published = next_file
                if allocation.holds(event_id):
                    mine = next(e for e in allocation.events if e.event_id == event_id)
                    if mine.correlation_id:  # the job's log lines carry the change's request id
                        correlation_id.set(mine.correlation_id)
                    return self._result(event_id, allocation.seq, published)
            # Another relay took it: give it a moment to publish, then publish it here.
            wait_until = loop.time() + 2.0
            while True:
                async with self.sessions() as session:
                    row = (
                        await session.execute(
                            select(OutboxEvent.export_seq, ExportFile.published_at)
                            .outerjoin(
                                ExportFile,
                                (ExportFile.stream == OutboxEvent.export_stream)
                                & (ExportFile.seq == OutboxEvent.export_seq),
                            )
                            .where(OutboxEvent.event_id == event_id)
                        )
                    ).first()
                if row is None:
                    raise LookupError(f"outbox event {event_id} does not exist")
                if row.export_seq is not None and row.published_at is not None:
                    return self._result(event_id, row.export_seq, None)
                if loop.time() > wait_until:
                    break
                await asyncio.sleep(0.02)
            if row.export_seq is not None:
                return self._result(
                    event_id, row.export_seq, await self.publish_file(row.export_seq)
                )
        raise TimeoutError(f"outbox event {event_id} is held by another relay; retry later")

    def _result(
        self, event_id: uuid.UUID, seq: int, published: PublishedFile | None
    ) -> dict[str, Any]:
        return {
            "event_id": str(event_id),
            "stream": self.stream,
            "seq": seq,
            "file": published.name if published else f"{self.stream}-{seq:012d}.jsonl",
            "published_now": published is not None,
        }
