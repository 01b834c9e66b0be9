"""Our thin layer over arq: queue names, enqueueing with a wake-up, and job states.

arq is in maintenance mode upstream, so the rest of the code talks to this module, never to arq
directly. Enqueueing also publishes on a per-queue channel that wakes idle workers at once
(``jobs.wakeup``), so pickup does not wait for the next poll.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

WAKE_CHANNEL_PREFIX = "netsync:wake:"
SYNC_JOB = "sync_changes"

JobState = Literal["queued", "in_progress", "complete", "failed", "not_found"]


def wake_channel(queue_name: str) -> str:
    return WAKE_CHANNEL_PREFIX + queue_name


def sync_job_id(event_id: uuid.UUID) -> str:
    return f"sync:{event_id}"


def redis_pool(dsn: str, *, queue_name: str, timeout_s: float = 2.0) -> ArqRedis:
    """An arq client that does not connect until used and gives up fast when Redis is down."""
    pool = ConnectionPool.from_url(
        dsn, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, health_check_interval=30
    )
    return ArqRedis(connection_pool=pool, default_queue_name=queue_name)


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: JobState
    function: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tries: int | None = None
    result: Any = None
    error: str | None = None


class QueueUnavailable(Exception):
    """Redis did not answer; job states are unknown right now."""


class JobQueue:
    """Enqueue jobs and read their state; one instance per process."""

    def __init__(self, redis: ArqRedis, *, sync_queue: str, enqueue_timeout_s: float = 1.0):
        self.redis = redis
        self.sync_queue = sync_queue
        self.enqueue_timeout_s = enqueue_timeout_s

    async def enqueue(self, function: str, *args: Any, job_id: str, queue: str) -> bool:
        """Enqueue and wake a worker; False (logged) when Redis cannot take it right now."""
        try:
            async with asyncio.timeout(self.enqueue_timeout_s):
                await self.redis.enqueue_job(function, *args, _job_id=job_id, _queue_name=queue)
                await self.redis.publish(wake_channel(queue), b"1")
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "enqueue failed; the outbox sweeper will export the change",
                extra={"job_id": job_id, "error": repr(exc)},
            )
            return False
        return True

    async def enqueue_sync(self, event_id: uuid.UUID) -> bool:
        return await self.enqueue(
            SYNC_JOB, str(event_id), job_id=sync_job_id(event_id), queue=self.sync_queue
        )

    async def info(self, job_id: str) -> JobInfo:
        try:
            async with asyncio.timeout(self.enqueue_timeout_s):
                return await self._info(job_id)
        except (RedisError, OSError, TimeoutError) as exc:
            raise QueueUnavailable(repr(exc)) from exc

    async def _info(self, job_id: str) -> JobInfo:
        job = Job(job_id, self.redis, _queue_name=self.sync_queue)
        status = await job.status()
        if status == JobStatus.not_found:
            return JobInfo(job_id, "not_found")
        if status == JobStatus.complete:
            result = await job.result_info()
            if result is None:  # expired between the two reads
                return JobInfo(job_id, "not_found")
            ok = result.success
            return JobInfo(
                job_id,
                "complete" if ok else "failed",
                function=result.function,
                enqueued_at=result.enqueue_time,
                started_at=result.start_time,
                finished_at=result.finish_time,
                tries=result.job_try,
                result=result.result if ok else None,
                error=None if ok else repr(result.result),
            )
        definition = await job.info()
        return JobInfo(
            job_id,
            "in_progress" if status == JobStatus.in_progress else "queued",
            function=definition.function if definition else None,
            enqueued_at=definition.enqueue_time if definition else None,
            tries=definition.job_try if definition else None,
        )

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.enqueue_timeout_s):
                return bool(await self.redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self.redis.aclose(close_connection_pool=True)
