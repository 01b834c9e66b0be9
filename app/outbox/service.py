"""Recording changes in the outbox, inside the caller's transaction."""

from __future__ import annotations

import uuid
from typing import Any

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
