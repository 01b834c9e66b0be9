"""Exactly once per tick, never two runs at once: the guard around every periodic job.

arq's ``unique`` cron gives each tick the job id ``cron:<name>:<tick ms>`` and refuses to enqueue
an id whose job or result key exists. That is the first guard, and it has gaps we close here:

* the result key is the tombstone of a finished tick: cron jobs keep it ``TOMBSTONE_S`` (two days,
  not arq's default 0), so a late or clock-skewed replica cannot enqueue a finished tick again;
* ``run_at_startup`` is never used for periodic jobs: it would run once per replica start;
* the second guard is the database: the run claims its ``cron_ticks(name, tick_at)`` row first and
  does nothing when the row says the tick already ran (Redis flushed, tombstone expired).

The tick time comes from the job id (the schedule's time), never from the worker's clock, so two
replicas whose clocks disagree by a second still claim the same row.

No overlap: each run holds a PostgreSQL advisory lock named after the job for its whole duration
(on a connection of its own, so the lock dies with a crashed worker). A tick that finds the lock
held **is skipped**, recorded as ``skipped_overlap``: waiting would pile up ticks behind a slow
export, and the next tick exports fresher data anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from arq import Retry
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import ResponseSessionMaker
from app.scheduling.models import CronTick
from app.scheduling.registry import CRON_PREFIX

log = logging.getLogger(__name__)

#: How long a finished tick's result stays in Redis as a tombstone (arq's ``keep_result``).
TOMBSTONE_S = 2 * 86_400
#: A claimed tick still marked running/retrying can be taken over: its run died (we hold the lock).
_RETAKE = ("running", "retrying")

Work = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def tick_of(job_id: str | None) -> datetime | None:
    """The scheduled time of a cron job id ``cron:…:<ms>``; ``None`` for an on-demand run."""
    if not job_id or not job_id.startswith(CRON_PREFIX):
        return None
    _, _, ms = job_id.rpartition(":")
    if not ms.isdigit():
        return None
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key per job name."""
    digest = hashlib.blake2b(f"netsync.periodic:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


def retry_delay(job_try: int) -> float:
    """Backoff between tries of a failed periodic job: 5, 10, 20 … seconds, at most 5 minutes."""
    return float(min(300, 5 * 2 ** max(0, job_try - 1)))


async def _claim(sessions: ResponseSessionMaker, name: str, tick: datetime) -> int | None:
    """Insert (or take over a dead run's) tick row; ``None`` when the tick already ran."""
    stmt = insert(CronTick).values(
        name=name,
        tick_at=tick,
        status="running",
        attempts=1,
        worker=worker_id(),
        started_at=func.now(),
    )
    claim = stmt.on_conflict_do_update(
        index_elements=[CronTick.name, CronTick.tick_at],
        set_={
            "status": "running",
            "attempts": CronTick.attempts + 1,
            "worker": stmt.excluded.worker,
            "started_at": stmt.excluded.started_at,
            "error": None,
        },
        where=CronTick.status.in_(_RETAKE),
    ).returning(CronTick.attempts)
    async with sessions() as session, session.begin():
        attempts: int | None = await session.scalar(claim)
        return attempts


async def _finish(
    sessions: ResponseSessionMaker,
    name: str,
    tick: datetime,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            update(CronTick)
            .where(CronTick.name == name, CronTick.tick_at == tick)
            .values(status=status, finished_at=func.now(), result=result, error=error)
        )


async def _mark_overlap(sessions: ResponseSessionMaker, name: str, tick: datetime) -> None:
    stmt = insert(CronTick).values(
        name=name, tick_at=tick, status="skipped_overlap", attempts=0, worker=worker_id()
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[CronTick.name, CronTick.tick_at],
        set_={"status": "skipped_overlap", "finished_at": func.now()},
        where=CronTick.status == "retrying",
    )
    async with sessions() as session, session.begin():
        await session.execute(stmt)


async def _unlock(conn: AsyncConnection, key: int) -> None:
    try:
        await conn.scalar(select(func.pg_advisory_unlock(key)))
    except (SQLAlchemyError, OSError):
        # a lock we cannot release must not stay on a pooled connection: drop the connection
        await conn.invalidate()


async def run_guarded(
    ctx: dict[str, Any], name: str, work: Work, *, max_tries: int
) -> dict[str, Any]:
    """Run ``work`` for this job's tick at most once, and never alongside another run of it.

    On-demand runs (any job id that is not a cron tick) take the no-overlap lock but no tick row.
    A failure is retried with backoff (``Retry``) until ``max_tries``; the last failure is raised
    for the dead-letter wrapper (``app.queue.deadletter``) to record.
    """
    engine: AsyncEngine = ctx["engine"]
    sessions: ResponseSessionMaker = ctx["sessions"]
    tick = tick_of(ctx.get("job_id"))
    job_try: int = ctx.get("job_try", 1)
    where = {"job": name, "tick_at": tick.isoformat() if tick else None, "try": job_try}
    log.info("periodic job starting", extra={**where, "job_id": ctx.get("job_id")})
    async with engine.connect() as conn:
        lock = await conn.execution_options(isolation_level="AUTOCOMMIT")
        key = lock_key(name)
        if not await lock.scalar(select(func.pg_try_advisory_lock(key))):
            if tick is not None:
                await _mark_overlap(sessions, name, tick)
            log.warning("skipped: the previous run of this job is still running", extra=where)
            return {"skipped": "overlap", **where}
        try:
            if tick is not None and await _claim(sessions, name, tick) is None:
                log.info("skipped: this tick already ran", extra=where)
                return {"skipped": "duplicate", **where}
            try:
                result = await work(ctx)
            except asyncio.CancelledError:
                # shutdown or timeout: leave the tick to be taken over by arq's retry
                if tick is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(_finish(sessions, name, tick, "retrying"))
                raise
            except Exception as exc:
                final = job_try >= max_tries
                if tick is not None:
                    status = "failed" if final else "retrying"
                    await _finish(sessions, name, tick, status, error=repr(exc)[:2000])
                if final:
                    log.error("periodic job failed for good", extra={**where, "error": repr(exc)})
                    raise
                delay = retry_delay(job_try)
                log.warning(
                    "periodic job failed, retrying",
                    extra={**where, "error": repr(exc), "retry_in_s": delay},
                )
                raise Retry(defer=delay) from exc
            if tick is not None:
                await _finish(sessions, name, tick, "done", result=result)
            return {**result, **where}
        finally:
            await _unlock(lock, key)
