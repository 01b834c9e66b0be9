"""``GET /api/v1/outbox``: how much committed work has not left yet (administrators).

The same numbers as the worker's ``netsync_outbox_backlog`` gauges, read on demand: the dashboard
shows them without a Prometheus in between, and they stay true while every worker is down,
which is exactly when they matter.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import AdminUser, UowDep
from app.outbox.schemas import OutboxBacklogOut
from app.outbox.service import backlog
from netsync.errors import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1/outbox", tags=["jobs"], responses=ERROR_RESPONSES)


@router.get("")
async def read_outbox_backlog(uow: UowDep, _: AdminUser) -> OutboxBacklogOut:
    """Changes committed but not yet in an export file, and the age of the oldest."""
    pending = await backlog(uow.session)
    return OutboxBacklogOut(
        pending=pending.pending,
        oldest_pending_at=pending.oldest_pending_at,
        oldest_pending_age_s=round(pending.oldest_age_s(), 3),
    )
