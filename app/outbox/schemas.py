"""What ``GET /api/v1/outbox`` returns."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class OutboxBacklogOut(BaseModel):
    #: Committed changes not yet written to an export file.
    pending: int
    oldest_pending_at: datetime | None
    #: Seconds the oldest of them has waited; 0 when none. Above a few seconds, no worker runs.
    oldest_pending_age_s: float
