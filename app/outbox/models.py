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

from sqlalchemy import BigInteger, DateTime, ForeignKeyConstraint, Index, String, func, text
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
    """The last sequence number handed out per stream; its row lock orders the allocators."""

    __tablename__ = "export_streams"

    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)


class ExportFile(ResponseBase):
    __tablename__ = "export_files"

    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    file_id: Mapped[uuid.UUID] = mapped_column(default=uuid.uuid4)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    records: Mapped[int]
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sha256: Mapped[str | None] = mapped_column(String(64))
