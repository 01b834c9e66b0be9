"""The outbox relay: turns committed outbox rows into published export files.

Two short transactions per file, so that a crash anywhere loses nothing and duplicates nothing:

1. *Allocate*: under the stream's row lock, take the pending rows (oldest first), give them the
   next sequence number and record the file as unpublished. After this commit the file's content
   is fixed: it is exactly the outbox rows that carry its number.
2. *Publish*: lock unpublished files (``SKIP LOCKED``, so concurrent relays share the work), write
   each one from its rows, rename it into the exports directory and mark it published.

A crash after (1) leaves an unpublished file that the next relay run publishes; a crash during (2)
after the rename publishes the same file again, which the importer recognises by its ledger.
Pending rows are found by ``export_seq IS NULL``, never by ``id > last``, so a row whose
transaction commits late is never skipped.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert

from app.db import ResponseSession, ResponseSessionMaker
from app.outbox.models import ExportFile, ExportStream, OutboxEvent
from exchange.format import CHANGES_STREAM
from exchange.signing import Signer
from exchange.writer import PublishedFile, publish_export
from netsync.logging import correlation_id

log = logging.getLogger(__name__)


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
        batch_size: int = 1000,
        stream: str = CHANGES_STREAM,
    ) -> None:
        self.sessions = sessions
        self.exports_dir = exports_dir
        self.signer = signer
        self.batch_size = batch_size
        self.stream = stream
        self._stream_ready = False

    async def _allocate(self, session: ResponseSession) -> int | None:
        if not self._stream_ready:
            await session.execute(
                insert(ExportStream)
                .values(stream=self.stream, last_seq=0)
                .on_conflict_do_nothing(index_elements=["stream"])
            )
            self._stream_ready = True
        stream = await session.get(ExportStream, self.stream, with_for_update=True)
        assert stream is not None
        ids = list(
            await session.scalars(
                select(OutboxEvent.id)
                .where(OutboxEvent.export_seq.is_(None))
                .order_by(OutboxEvent.id)
                .limit(self.batch_size)
            )
        )
        if not ids:
            return None
        seq = stream.last_seq + 1
        stream.last_seq = seq
        session.add(
            ExportFile(
                stream=self.stream,
                seq=seq,
                file_id=uuid.uuid4(),
                created_at=datetime.now(UTC),
                records=len(ids),
            )
        )
        await session.flush()
        await session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(ids))
            .values(export_stream=self.stream, export_seq=seq)
        )
        return seq

    async def _publish(self, session: ResponseSession, file: ExportFile) -> PublishedFile:
        events: Sequence[OutboxEvent] = (
            await session.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.export_stream == file.stream, OutboxEvent.export_seq == file.seq)
                .order_by(OutboxEvent.id)
            )
        ).all()
        records = [_record(e) for e in events]
        published = await asyncio.to_thread(
            publish_export,
            self.exports_dir,
            self.signer,
            stream=file.stream,
            seq=file.seq,
            kind="changes",
            file_id=file.file_id,
            created_at=file.created_at,
            records=records,
        )
        file.published_at = datetime.now(UTC)
        file.sha256 = published.sha256
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

    async def publish_pending(self) -> list[PublishedFile]:
        """Publish every unpublished file that no other relay is publishing right now."""
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
        """Publish one file, waiting for a relay that holds it; ``None`` if already published."""
        async with self.sessions() as session, session.begin():
            file = await session.get(ExportFile, (self.stream, seq), with_for_update=True)
            if file is None or file.published_at is not None:
                return None
            return await self._publish(session, file)

    async def run(self) -> RelayResult:
        """The sweeper: publish leftovers, then allocate and publish until nothing is pending."""
        files = await self.publish_pending()
        while True:
            async with self.sessions() as session, session.begin():
                seq = await self._allocate(session)
            if seq is None:
                break
            published = await self.publish_file(seq)
            if published is not None:
                files.append(published)
        return RelayResult(files, sum(f.records for f in files))

    async def export_event(self, event_id: uuid.UUID) -> dict[str, Any]:
        """Make sure one event's file is published: the work and the result of its sync job.

        The fast path is two transactions: allocate (taking this event and any other pending
        ones), then publish that file.
        """
        while True:
            async with self.sessions() as session, session.begin():
                row = (
                    await session.execute(
                        select(OutboxEvent.export_seq, OutboxEvent.correlation_id).where(
                            OutboxEvent.event_id == event_id
                        )
                    )
                ).first()
                if row is None:
                    raise LookupError(f"outbox event {event_id} does not exist")
                if row.correlation_id:  # the job's log lines carry the change's request id
                    correlation_id.set(row.correlation_id)
                if row.export_seq is not None:
                    seq: int = row.export_seq
                    break
                await self._allocate(session)
        published = await self.publish_file(seq)
        return {
            "event_id": str(event_id),
            "stream": self.stream,
            "seq": seq,
            "file": published.name if published else f"{self.stream}-{seq:012d}.jsonl",
            "published_now": published is not None,
        }
