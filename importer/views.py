"""Read-only views of the sync's state in the Request database, which both the daemon (its gauges,
``importer.daemon.watch``) and the Request API (``/api/v1/sync/status``) show. The daemon's
``importer.daemon.gaps`` records and closes the gaps; this only reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from importer.db import RequestSession
from importer.models import SyncGap


@dataclass(frozen=True)
class Gap:
    stream: str
    first_seq: int
    last_seq: int
    first_seen_at: datetime
    generation: int = 0

    @property
    def missing(self) -> int:
        return self.last_seq - self.first_seq + 1

    def age_s(self, now: datetime) -> float:
        return max(0.0, (now - self.first_seen_at).total_seconds())


@dataclass(frozen=True)
class GapStats:
    """The numbers a gauge wants: open gaps, files missing in them, age of the oldest."""

    open_gaps: int
    missing_files: int
    oldest_age_s: float


async def open_gaps(session: RequestSession, stream: str | None = None) -> list[Gap]:
    query = select(SyncGap).order_by(SyncGap.stream, SyncGap.generation, SyncGap.first_seq)
    if stream is not None:
        query = query.where(SyncGap.stream == stream)
    rows = (await session.scalars(query)).all()
    return [Gap(r.stream, r.first_seq, r.last_seq, r.first_seen_at, r.generation) for r in rows]


def summarise(gaps: Sequence[Gap], now: datetime | None = None) -> GapStats:
    now = now or datetime.now(UTC)
    return GapStats(
        open_gaps=len(gaps),
        missing_files=sum(g.missing for g in gaps),
        oldest_age_s=round(max((g.age_s(now) for g in gaps), default=0.0), 3),
    )
