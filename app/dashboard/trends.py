"""The dashboard's trends: the last hour of sync lag, changes exported and applied per second,
queue depths and failures, kept by the Response API itself.

An operator of a network kept apart may have no Prometheus (``deploy/monitoring`` serves those
who do), so every ``NETSYNC_TRENDS_INTERVAL_S`` (10 s) one Response API replica, the one that
takes a short Redis lock for that tick, samples what it can see and appends a point to a
bounded Redis list (one hour of points; ``LTRIM`` keeps it so). Rates are counted from the
database, not from process counters, so they stay true across replicas and restarts:

* exported: the records of ``changes`` files published since the previous point;
* applied: the records of ``changes`` files between the Request Network's previous and current
  newest applied file (``GET /api/v1/sync/status`` of the Request API, as the dashboard's own
  status panel asks it), and the largest lag of any stream as that panel shows it (how long the
  oldest file not yet applied has waited: 0 when the networks agree); unknown (``null``) while
  the Request API is not configured or does not answer;
* queue depths, dead letters and the outbox backlog as they are, and the Request Network's
  quarantined files.

``GET /api/v1/trends`` hands the points to the page, which draws them with uPlot (vendored under
``static/vendor``: no CDN, the Response Network may be offline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from app.config import ResponseSettings
from app.dashboard.sync_status import applied_seqs, fetch_request_status, stream_lags
from app.db import ResponseSessionMaker
from app.deps import AdminUser, QueueDep, SettingsDep
from app.outbox.models import ExportFile, OutboxEvent
from app.queue.client import JobQueue, QueueUnavailable
from exchange.format import CHANGES_STREAM
from netsync.errors import ERROR_RESPONSES, ServiceUnavailable

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["jobs"], responses=ERROR_RESPONSES)

#: One hour of points at any interval, and never more than this many.
WINDOW_S = 3600
MAX_POINTS = 720


class TrendPoint(BaseModel):
    t: float
    exported_per_s: float
    applied_per_s: float | None
    lag_s: float | None
    sync_queue: int
    bulk_queue: int
    dead: int
    outbox_pending: int
    quarantined: int | None


class Trends(BaseModel):
    interval_s: float
    points: list[TrendPoint]


def _keys(settings: ResponseSettings) -> tuple[str, str, str]:
    base = f"netsync:trends:{settings.sync_queue}"
    return base, base + ":state", base + ":lock"


def _capacity(interval_s: float) -> int:
    return max(2, min(MAX_POINTS, int(WINDOW_S / interval_s)))


async def _records(sessionmaker: ResponseSessionMaker, *conditions: Any) -> int:
    async with sessionmaker() as session:
        total = await session.scalar(
            select(func.coalesce(func.sum(ExportFile.records), 0)).where(
                ExportFile.stream == CHANGES_STREAM, *conditions
            )
        )
    return int(total or 0)


async def sample(
    settings: ResponseSettings, sessionmaker: ResponseSessionMaker, queue: JobQueue
) -> TrendPoint:
    """One point, and the state the next one counts from (kept in Redis)."""
    _, state_key, _ = _keys(settings)
    now = time.time()
    raw = await queue.redis.get(state_key)
    state: dict[str, Any] = orjson.loads(raw) if raw else {}
    since = float(state.get("t", now - settings.trends_interval_s))
    elapsed = max(1e-3, now - since)
    exported = await _records(
        sessionmaker,
        ExportFile.published_at > func.to_timestamp(since),
        ExportFile.published_at <= func.to_timestamp(now),
    )
    applied_per_s = lag = quarantined = None
    applied_seq = state.get("applied_seq")
    if settings.request_api_url:
        status, _error = await fetch_request_status(settings)
        if status is not None:
            current = applied_seqs(status).get(CHANGES_STREAM, 0)
            if isinstance(applied_seq, int) and current >= applied_seq:
                done = await _records(
                    sessionmaker, ExportFile.seq > applied_seq, ExportFile.seq <= current
                )
                applied_per_s = round(done / elapsed, 3)
            applied_seq = current
            async with sessionmaker() as session:  # the status panel's lag: 0 when they agree
                lags = await stream_lags(session, applied_seqs(status))
            lag = max((s.lag_s for s in lags), default=0.0)
            quarantined = int(status.get("files_quarantined") or 0)
    async with sessionmaker() as session:
        pending = await session.scalar(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.export_seq.is_(None))
        )
    sizes = await queue.queue_sizes()
    await queue.redis.set(state_key, orjson.dumps({"t": now, "applied_seq": applied_seq}))
    return TrendPoint(
        t=round(now, 3),
        exported_per_s=round(exported / elapsed, 3),
        applied_per_s=applied_per_s,
        lag_s=lag,
        sync_queue=sizes["sync"][0],
        bulk_queue=sizes["bulk"][0],
        dead=sizes["sync"][1] + sizes["bulk"][1],
        outbox_pending=int(pending or 0),
        quarantined=quarantined,
    )


async def record(
    settings: ResponseSettings, sessionmaker: ResponseSessionMaker, queue: JobQueue
) -> bool:
    """Take this tick's point if no other replica has; False when another one had it."""
    series, _, lock = _keys(settings)
    interval_ms = int(settings.trends_interval_s * 1000)
    if not await queue.redis.set(lock, b"1", px=max(1, interval_ms - 50), nx=True):
        return False
    point = await sample(settings, sessionmaker, queue)
    async with queue.redis.pipeline(transaction=True) as pipe:
        pipe.rpush(series, point.model_dump_json())
        pipe.ltrim(series, -_capacity(settings.trends_interval_s), -1)
        await pipe.execute()
    return True


async def run(app: FastAPI) -> None:
    """The sampling loop, for the API's lifespan; a failed tick is logged and the next one tried."""
    settings: ResponseSettings = app.state.settings
    while True:
        await asyncio.sleep(settings.trends_interval_s)
        try:
            await record(settings, app.state.sessionmaker, app.state.queue)
        except (RedisError, OSError, SQLAlchemyError, QueueUnavailable, TimeoutError) as exc:
            log.warning("trend sample skipped", extra={"error": type(exc).__name__})
        except Exception:  # a sampler must not die for the rest of the process's life
            log.exception("trend sample failed")


def start(app: FastAPI) -> asyncio.Task[None] | None:
    settings: ResponseSettings = app.state.settings
    if settings.trends_interval_s <= 0:
        return None
    return asyncio.create_task(run(app), name="netsync-trends")


async def stop(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@router.get("/trends")
async def read_trends(queue: QueueDep, settings: SettingsDep, _: AdminUser) -> Trends:
    """The last hour of points, oldest first (empty until the first tick)."""
    series = _keys(settings)[0]
    try:
        raw: list[bytes] = await queue.redis.lrange(series, 0, -1)  # type: ignore[misc]
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable("Redis is unreachable; trends are kept there") from exc
    points = []
    for stored in raw:
        with contextlib.suppress(ValueError):  # a point this version cannot read is skipped
            points.append(TrendPoint.model_validate_json(stored))
    return Trends(interval_s=settings.trends_interval_s, points=points)
