"""Our thin layer over arq: queue names, enqueueing with a wake-up, and job states.

arq is in maintenance mode upstream, so the rest of the code talks to this module, never to arq
directly. Enqueueing also publishes on a per-queue channel that wakes idle workers at once
(``jobs.wakeup``), so pickup does not wait for the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import Job, JobStatus, deserialize_job
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError

from app.queue import listing
from app.queue.deadletter import DeadJob, DeadLetters
from app.queue.serialization import deserialize, serialize
from app.queue.states import JobInfo, JobState, result_info
from netsync import metrics
from netsync.redis_conn import connection_pool

__all__ = [
    "EXPORTS",
    "SYNC_JOB",
    "DeadJob",
    "JobInfo",
    "JobQueue",
    "JobState",
    "QueueUnavailable",
    "export_job",
    "redis_pool",
    "sync_job_id",
]

log = logging.getLogger(__name__)

WAKE_CHANNEL_PREFIX = "netsync:wake:"
#: ``netsync:workers:<worker id>``: a live worker's heartbeat (``jobs.observe``), with a TTL.
WORKER_KEY_PREFIX = "netsync:workers:"
SYNC_JOB = "sync_changes"
#: arq registers a cron job's function under ``cron:<name>``; this one sweeps the outbox.
SWEEP_JOB = "cron:sweep_outbox"
#: Exports an operator can run now: job ``export_<name>`` on the bulk queue.
EXPORTS = ("settings", "users", "profile_types", "results")


def wake_channel(queue_name: str) -> str:
    return WAKE_CHANNEL_PREFIX + queue_name


def sync_job_id(event_id: uuid.UUID) -> str:
    return f"sync:{event_id}"


def export_job(name: str) -> str:
    return f"export_{name}"


def redis_pool(dsn: str, *, queue_name: str, timeout_s: float = 2.0) -> ArqRedis:
    """An arq client that does not connect until used and gives up fast when Redis is down
    (``timeout_s`` to connect and for every reply). A Sentinel URL gives a client that follows
    failovers (``netsync.redis_conn``)."""
    pool = connection_pool(
        dsn, connect_timeout_s=timeout_s, socket_timeout_s=timeout_s, health_check_interval=30
    )
    return arq_client(pool, queue_name=queue_name)


def arq_client(pool: ConnectionPool, *, queue_name: str) -> ArqRedis:
    """arq's client on ``pool``, with our JSON job serialization (never pickle)."""
    return ArqRedis(
        connection_pool=pool,
        default_queue_name=queue_name,
        job_serializer=serialize,
        job_deserializer=deserialize,
    )


class QueueUnavailable(Exception):
    """Redis did not answer; job states are unknown right now."""


class JobQueue:
    """Enqueue jobs and read their state; one instance per process."""

    def __init__(
        self,
        redis: ArqRedis,
        *,
        sync_queue: str,
        bulk_queue: str = "netsync:queue:bulk",
        enqueue_timeout_s: float = 1.0,
    ):
        self.redis = redis
        self.sync_queue = sync_queue
        self.bulk_queue = bulk_queue
        self.enqueue_timeout_s = enqueue_timeout_s
        #: Reading many keys (listings, purges) takes longer than one enqueue.
        self.inspect_timeout_s = max(10.0, enqueue_timeout_s)
        self.dead_letters = DeadLetters(redis)

    @property
    def queues(self) -> dict[str, str]:
        """Our queues: short name (as the API shows it) → arq queue name (the Redis key)."""
        return {"sync": self.sync_queue, "bulk": self.bulk_queue}

    async def submit(
        self, function: str, *args: Any, job_id: str, queue: str, **kwargs: Any
    ) -> None:
        """Enqueue and wake a worker; raises ``QueueUnavailable`` when Redis cannot take it."""
        try:
            async with asyncio.timeout(self.enqueue_timeout_s):
                await self.redis.enqueue_job(
                    function, *args, _job_id=job_id, _queue_name=queue, **kwargs
                )
                await self.redis.publish(wake_channel(queue), b"1")
        except (RedisError, OSError, TimeoutError) as exc:
            raise QueueUnavailable(repr(exc)) from exc

    async def enqueue(self, function: str, *args: Any, job_id: str, queue: str) -> bool:
        """Enqueue and wake a worker; False (logged) when Redis cannot take it right now."""
        try:
            await self.submit(function, *args, job_id=job_id, queue=queue)
        except QueueUnavailable as exc:
            log.warning(
                "enqueue failed; the outbox sweeper will export the change",
                extra={"job_id": job_id, "error": str(exc)},
            )
            return False
        metrics.JOBS_ENQUEUED.labels(function, queue).inc()
        return True

    async def enqueue_export(self, name: str) -> str:
        """Run export ``name`` now on the bulk queue, under a fresh job id."""
        job_id = f"export:{name}:{uuid.uuid4().hex}"
        await self.submit(export_job(name), job_id=job_id, queue=self.bulk_queue)
        return job_id

    async def enqueue_sweep(self) -> str | None:
        """Run the outbox sweeper now (after a bulk change: its rows leave in large files);
        the job id, or None when Redis cannot take it (the sweeper's own tick covers it)."""
        job_id = f"export:changes:{uuid.uuid4().hex[:12]}"
        if await self.enqueue(SWEEP_JOB, job_id=job_id, queue=self.sync_queue):
            return job_id
        return None

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

    def queue_label(self, queue_key: str) -> str | None:
        return next((name for name, key in self.queues.items() if key == queue_key), None)

    async def _info(self, job_id: str) -> JobInfo:
        # A finished or running job's status does not depend on the queue; a queued one's does.
        for queue in self.queues.values():
            job = Job(job_id, self.redis, _queue_name=queue, _deserializer=deserialize)
            status = await job.status()
            if status != JobStatus.not_found:
                break
        else:
            return JobInfo(job_id, "not_found")
        if status == JobStatus.complete:
            result = await job.result_info()
            if result is None:  # expired between the two reads
                return JobInfo(job_id, "not_found")
            return result_info(result, job_id, self.queue_label(result.queue_name))
        definition = await job.info()
        label = None
        for name, queue in self.queues.items():
            if await self.redis.zscore(queue, job_id) is not None:
                label = name
                break
        return JobInfo(
            job_id,
            "in_progress" if status == JobStatus.in_progress else "queued",
            function=definition.function if definition else None,
            enqueued_at=definition.enqueue_time if definition else None,
            tries=definition.job_try if definition else None,
            queue=label,
        )

    @asynccontextmanager
    async def _inspecting(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.inspect_timeout_s):
                yield
        except (RedisError, OSError, TimeoutError) as exc:
            raise QueueUnavailable(repr(exc)) from exc

    def queue_key(self, name: str) -> str | None:
        """A queue's Redis key from its short name (``sync``) or its key itself."""
        return self.queues.get(name) or (name if name in self.queues.values() else None)

    async def list_jobs(self, state: listing.ListState, *, limit: int) -> listing.JobListing:
        async with self._inspecting():
            return await listing.list_jobs(self.redis, self.queues, state, limit=limit)

    async def deferred_jobs(self, *, limit: int) -> listing.JobListing:
        """Jobs waiting for a later time on our queues, soonest first."""
        async with self._inspecting():
            return await listing.list_deferred(self.redis, self.queues, limit=limit)

    async def queue_sizes(self) -> dict[str, tuple[int, int]]:
        """Per queue: jobs waiting or running, and dead jobs."""
        async with self._inspecting():
            return {
                name: (
                    await listing.queue_size(self.redis, key),
                    await self.dead_letters.count(key),
                )
                for name, key in self.queues.items()
            }

    async def purge(self, queue_key: str) -> int:
        async with self._inspecting():
            removed = await listing.purge(self.redis, queue_key)
        log.warning("queue purged", extra={"queue": queue_key, "removed": removed})
        return removed

    async def last_run(self, job_name: str, queue_key: str) -> JobInfo | None:
        async with self._inspecting():
            return await listing.last_result(self.redis, job_name, queue_key)

    async def dead_jobs(self, *, limit: int) -> list[DeadJob]:
        async with self._inspecting():
            return await self.dead_letters.list(self.queues.values(), limit=limit)

    async def discard_dead(self, job_id: str) -> DeadJob | None:
        async with self._inspecting():
            return await self.dead_letters.take(self.queues.values(), job_id)

    async def retry_dead(self, job_id: str) -> str | None:
        """Run a dead job again (same function, arguments and queue) under a new id.

        The entry is taken off the list first, so two concurrent retries run it once; if the
        enqueue fails it is put back. ``None`` when no such dead job exists.
        """
        async with self._inspecting():
            dead = await self.dead_letters.take(self.queues.values(), job_id)
        if dead is None:
            return None
        new_id = f"{dead.job_id.split(':retry:')[0]}:retry:{uuid.uuid4().hex[:12]}"
        try:
            await self.submit(
                dead.function, *dead.args, job_id=new_id, queue=dead.queue, **dead.kwargs
            )
        except QueueUnavailable:
            with contextlib.suppress(RedisError, OSError):
                await self.dead_letters.record(dead)
            raise
        log.info("dead job retried", extra={"job_id": dead.job_id, "new_job_id": new_id})
        return new_id

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
        definition = deserialize_job(value, deserializer=deserialize)
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
