"""The transactional outbox and the bookkeeping of export files.

An outbox row is written in the same transaction as the change it records, so a change leaves the
Response Network if and only if it committed. The relay (``jobs.relay``) assigns pending rows to a
numbered export file in one transaction, then publishes the file; the numbering is durable before
the file exists, so a crash between the two is repaired by publishing the same file again.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKeyConstraint, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import ResponseBase


class OutboxEvent(ResponseBase):
    __tablename__ = "outbox_events"
    __table_args__ = (
        Index(
            "ix_outbox_events_pending",
            "id",
            postgresql_where=text("export_seq IS NULL"),
        ),
        Index("ix_outbox_events_export_seq", "export_stream", "export_seq"),
        ForeignKeyConstraint(
            ["export_stream", "export_seq"], ["export_files.stream", "export_files.seq"]
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(unique=True, default=uuid.uuid4)
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[uuid.UUID]
    version: Mapped[int]
    op: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    export_stream: Mapped[str | None] = mapped_column(String(32))
    export_seq: Mapped[int | None] = mapped_column(BigInteger)


class ExportStream(ResponseBase):
    """The last sequence number handed out per stream; its row lock orders the allocators.

    ``generation`` is the generation the stream numbers its files in (``jobs.generations``) and
    ``generation_base`` its last number before that generation began: numbers go on growing
    across generations, and the Request side knows where each generation's files start.
    """

    __tablename__ = "export_streams"

    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    generation_base: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ExportGeneration(ResponseBase):
    """A generation this database began: after it was found restored, or on an operator's word.

    Generation 0 is the first and has no row. A generation's number is the time it began in
    milliseconds (or one more than the last, if larger), so a generation begun after a restore is
    newer than any begun on the timeline the restore undid.
    """

    __tablename__ = "export_generations"

    generation: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)


class ExportFile(ResponseBase):
    __tablename__ = "export_files"

    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    file_id: Mapped[uuid.UUID] = mapped_column(default=uuid.uuid4)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    records: Mapped[int]
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sha256: Mapped[str | None] = mapped_column(String(64))
    #: The generation the file was numbered in and its stream's base in it: a file published
    #: again carries the header it was first allocated with.
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    since_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
