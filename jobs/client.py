"""Our thin layer over arq: queue names, enqueueing with a wake-up, and job states.

arq is in maintenance mode upstream, so the rest of the code talks to this module, never to arq
directly. Enqueueing also publishes on a per-queue channel that wakes idle workers at once
(``jobs.wakeup``), so pickup does not wait for the next poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import Job, JobStatus, deserialize_job
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError

from netsync import metrics

log = logging.getLogger(__name__)

WAKE_CHANNEL_PREFIX = "netsync:wake:"
#: ``netsync:workers:<worker id>``: a live worker's heartbeat (``jobs.observe``), with a TTL.
WORKER_KEY_PREFIX = "netsync:workers:"
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
        metrics.JOBS_ENQUEUED.labels(function, queue).inc()
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


# -- what operators inspect (``netsync inspect queued|active|workers``) -------------------------


async def queue_depth(redis: ArqRedis, queue: str) -> tuple[int, int]:
    """``(due, deferred)``: jobs of ``queue`` due now, and jobs waiting for a later time (retries
    in backoff, the next tick of a cron job, which arq enqueues about a second early)."""
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(queue, "-inf", now_ms)
        pipe.zcount(queue, f"({now_ms}", "+inf")
        due, deferred = await pipe.execute()
    return int(due), int(deferred)


async def _describe(redis: ArqRedis, job_ids: list[str], state: JobState) -> list[JobInfo]:
    if not job_ids:
        return []
    raw = await redis.mget([job_key_prefix + job_id for job_id in job_ids])
    jobs: list[JobInfo] = []
    for job_id, value in zip(job_ids, raw, strict=True):
        if value is None:  # finished between the two reads
            continue
        definition = deserialize_job(value)
        jobs.append(
            JobInfo(
                job_id,
                state,
                function=definition.function,
                enqueued_at=definition.enqueue_time,
                tries=definition.job_try,
            )
        )
    return jobs


async def list_queued(redis: ArqRedis, queue: str, *, limit: int = 1000) -> list[JobInfo]:
    """The jobs waiting in ``queue``, next to run first (at most ``limit``)."""
    job_ids = [m.decode() for m in await redis.zrange(queue, 0, max(0, limit - 1))]
    return await _describe(redis, job_ids, "queued")


async def list_active(redis: ArqRedis, *, limit: int = 1000) -> list[JobInfo]:
    """Jobs some worker is running now, on any queue (arq's in-progress keys are global)."""
    job_ids: list[str] = []
    async for key in redis.scan_iter(match=in_progress_key_prefix + "*", count=500):
        job_ids.append(key.decode()[len(in_progress_key_prefix) :])
        if len(job_ids) >= limit:
            break
    return await _describe(redis, sorted(job_ids), "in_progress")


async def list_workers(redis: ArqRedis) -> list[dict[str, Any]]:
    """The heartbeats of the workers alive now (each key expires unless its worker renews it)."""
    keys = [key async for key in redis.scan_iter(match=WORKER_KEY_PREFIX + "*", count=500)]
    if not keys:
        return []
    workers = [orjson.loads(value) for value in await redis.mget(keys) if value is not None]
    return sorted(workers, key=lambda w: str(w.get("id")))
