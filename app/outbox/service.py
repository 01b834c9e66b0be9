"""Recording changes in the outbox, inside the caller's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db import ResponseSession
from app.outbox.models import OutboxEvent
from exchange.entities import Entity
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


class _Synced(Protocol):
    """A Response row of a synced entity: its id, its version and its declared fields."""

    id: uuid.UUID
    version: int


async def record_upsert(session: ResponseSession, entity: Entity, row: _Synced) -> OutboxEvent:
    """The outbox row of ``row``'s new state, with the payload its declaration gives
    (``exchange.entities``)."""
    return await record_change(
        session,
        entity=entity.name,
        entity_id=row.id,
        version=row.version,
        op="upsert",
        data=entity.payload(row),
    )


async def record_delete(session: ResponseSession, entity: Entity, row: _Synced) -> OutboxEvent:
    """The outbox row of ``row``'s removal: a tombstone one version above its last state."""
    return await record_change(
        session,
        entity=entity.name,
        entity_id=row.id,
        version=row.version + 1,
        op="delete",
        data=None,
    )


_RECORD_MANY = text(
    """
    INSERT INTO outbox_events (event_id, entity, entity_id, version, op, data, correlation_id)
    SELECT gen_random_uuid(), :entity, entity_id, version, 'upsert', data, :correlation_id
    FROM unnest(CAST(:ids AS uuid[]), CAST(:versions AS bigint[]), CAST(:data AS jsonb[]))
        AS t(entity_id, version, data)
    """
)


async def record_upserts(
    session: ResponseSession,
    *,
    entity: str,
    changes: Sequence[tuple[uuid.UUID, int, dict[str, Any]]],
) -> None:
    """Outbox rows for many upserts (id, version, sync payload) in one statement: what a bulk
    import writes per batch, instead of one ``record_change`` per row."""
    if not changes:
        return
    await session.execute(
        _RECORD_MANY,
        {
            "entity": entity,
            "correlation_id": correlation_id.get(),
            "ids": [c[0] for c in changes],
            "versions": [c[1] for c in changes],
            "data": [orjson.dumps(c[2]).decode() for c in changes],
        },
    )


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
