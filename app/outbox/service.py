"""Recording changes in the outbox, inside the caller's transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db import ResponseSession
from app.outbox.models import OutboxEvent
from netsync.logging import correlation_id


async def record_change(
    session: ResponseSession,
    *,
    entity: str,
    entity_id: uuid.UUID,
    version: int,
    op: str,
    data: dict[str, Any] | None,
) -> OutboxEvent:
    """Add one outbox row; it commits or rolls back with the change it describes."""
    event = OutboxEvent(
        event_id=uuid.uuid4(),
        entity=entity,
        entity_id=entity_id,
        version=version,
        op=op,
        data=data,
        correlation_id=correlation_id.get(),
    )
    session.add(event)
    await session.flush()
    return event


@dataclass(frozen=True)
class Backlog:
    """Changes committed but not yet in an export file (``export_seq IS NULL``)."""

    pending: int
    oldest_pending_at: datetime | None

    def oldest_age_s(self, now: datetime | None = None) -> float:
        """Age of the oldest pending change; 0 when none."""
        if self.oldest_pending_at is None:
            return 0.0
        return max(0.0, ((now or datetime.now(UTC)) - self.oldest_pending_at).total_seconds())


async def backlog(db: AsyncConnection | AsyncSession) -> Backlog:
    """The outbox backlog, for the worker's gauges and the operators' endpoint alike: a
    connection (no transaction of its own to speak of) or a request's session."""
    row = (
        await db.execute(
            select(func.count(), func.min(OutboxEvent.created_at)).where(
                OutboxEvent.export_seq.is_(None)
            )
        )
    ).one()
    return Backlog(pending=row[0], oldest_pending_at=row[1])
