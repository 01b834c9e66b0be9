"""What the periodic jobs record in the Response database.

``cron_ticks`` is the second guard of exactly-once: every scheduled tick of every job is claimed by
inserting its ``(name, tick_at)`` row, so a tick that arq enqueues twice (a forgotten tombstone, a
lagging or skewed replica) finds the row and does nothing. It is also the schedule's memory: the
last run of each job, skipped overlaps, and what a tick returned or why it failed.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Date, DateTime, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import ResponseBase


class CronTick(ResponseBase):
    """One scheduled tick of one periodic job; the primary key makes it happen at most once."""

    __tablename__ = "cron_ticks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The time the schedule gave the tick (from arq's job id), never a worker's clock reading.
    tick_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    #: running, retrying, done, failed, skipped_overlap
    status: Mapped[str] = mapped_column(String(24))
    attempts: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)


class SystemSample(ResponseBase):
    """One ``system_monitoring`` reading: queues, workers, outbox, exports directory."""

    __tablename__ = "system_samples"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    taken_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
    stale: Mapped[bool] = mapped_column(Boolean, default=False)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)


class DailyStats(ResponseBase):
    """The sync statistics of one day (in the schedule's time zone)."""

    __tablename__ = "daily_stats"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    computed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)


class ExportedResult(ResponseBase):
    """A finished job's result on its way to the Request Network: a small outbox of its own.

    Results live in Redis for an hour; the row keeps the record until its ``results`` file is
    published (``export_seq`` set under the stream lock, like ``outbox_events``), so each result
    is exported exactly once and a crash before publication loses nothing.
    """

    __tablename__ = "exported_results"

    job_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSONB)
    export_seq: Mapped[int | None] = mapped_column(BigInteger, index=True)
