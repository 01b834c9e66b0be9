"""Reading and purging arq's queues: what ``celery inspect`` and ``LLEN celery`` told operators.

arq keeps, per job: ``arq:job:<id>`` (its definition) and membership of its queue's sorted set
(scored by when it may run) while queued or running, ``arq:in-progress:<id>`` while a worker runs
it, and ``arq:result:<id>`` once finished (for ``keep_result`` seconds). Only our queues are
looked at: a queued or running job is found through its queue's sorted set, a finished one by its
result's ``queue_name``, so deployments sharing a Redis database do not see each other's jobs.

Listings are bounded: at most ``MAX_EXAMINED`` jobs are read per call, with ``truncated`` set when
more exist. Keys are walked with ``SCAN``, never ``KEYS``, so Redis is never blocked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast

from arq.connections import ArqRedis
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import DeserializationError, deserialize_job, deserialize_result

from app.queue.serialization import deserialize
from app.queue.states import JobInfo, result_info

ListState = Literal["queued", "in_progress", "complete", "failed"]
MAX_EXAMINED = 20_000
_CHUNK = 500
_EPOCH = datetime.fromtimestamp(0, UTC)


@dataclass(frozen=True)
class JobListing:
    items: list[JobInfo]
    #: More jobs may match than were examined.
    truncated: bool


def _due_at(score: float) -> datetime:
    """arq scores a queued job by when it may run, in epoch milliseconds."""
    return datetime.fromtimestamp(score / 1000, UTC)


async def _describe(
    redis: ArqRedis, chunk: list[tuple[bytes, float]], name: str
) -> list[tuple[bool, JobInfo]]:
    """``(running, job)`` for queue members ``(id, score)``; jobs already gone are skipped."""
    ids = [member.decode() for member, _ in chunk]
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.exists(in_progress_key_prefix + job_id)
        for job_id in ids:
            pipe.get(job_key_prefix + job_id)
        replies = await pipe.execute()
    running, definitions = replies[: len(ids)], replies[len(ids) :]
    found: list[tuple[bool, JobInfo]] = []
    for job_id, (_, score), is_running, raw in zip(ids, chunk, running, definitions, strict=True):
        if raw is None:
            continue
        try:
            job = deserialize_job(raw, deserializer=deserialize)
        except DeserializationError:
            job = None
        info = JobInfo(
            job_id,
            "in_progress" if is_running else "queued",
            function=job.function if job else None,
            enqueued_at=job.enqueue_time if job else None,
            tries=job.job_try if job else None,
            queue=name,
            scheduled_at=_due_at(score),
        )
        found.append((bool(is_running), info))
    return found


async def _pending(
    redis: ArqRedis, queues: Mapping[str, str], state: ListState, limit: int
) -> JobListing:
    items: list[JobInfo] = []
    examined = 0
    for name, key in queues.items():
        start = 0
        while len(items) < limit:
            if examined >= MAX_EXAMINED:
                return JobListing(items, truncated=True)
            chunk = await redis.zrange(key, start, start + _CHUNK - 1, withscores=True)
            if not chunk:
                break
            start += len(chunk)
            examined += len(chunk)
            for is_running, info in await _describe(redis, chunk, name):
                if is_running != (state == "in_progress"):
                    continue
                items.append(info)
                if len(items) >= limit:
                    return JobListing(items, truncated=True)
    return JobListing(items, truncated=False)


async def list_deferred(
    redis: ArqRedis, queues: Mapping[str, str], *, limit: int, now: datetime | None = None
) -> JobListing:
    """Queued jobs not due yet (retries in backoff, a cron tick enqueued ahead), soonest first."""
    now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
    items: list[JobInfo] = []
    truncated = False
    for name, key in queues.items():
        chunk = await redis.zrangebyscore(
            key, f"({now_ms}", "+inf", start=0, num=limit + 1, withscores=True
        )
        truncated = truncated or len(chunk) > limit
        items.extend(info for _, info in await _describe(redis, chunk[:limit], name))
    items.sort(key=lambda info: info.scheduled_at or _EPOCH)
    return JobListing(items[:limit], truncated=truncated or len(items) > limit)


async def _finished(
    redis: ArqRedis, queues: Mapping[str, str], state: ListState, limit: int
) -> JobListing:
    names = {key: name for name, key in queues.items()}
    items: list[JobInfo] = []
    examined = 0
    truncated = False
    batch: list[bytes] = []

    async def flush() -> None:
        raws = await redis.mget(batch)
        for key, raw in zip(batch, raws, strict=True):
            if raw is None:
                continue
            try:
                result = deserialize_result(raw, deserializer=deserialize)
            except DeserializationError:
                continue
            if result.queue_name in names and (result.success == (state == "complete")):
                job_id = key[len(result_key_prefix) :].decode()
                items.append(result_info(result, job_id, names[result.queue_name]))
        batch.clear()

    async for key in redis.scan_iter(match=result_key_prefix + "*", count=1000):
        batch.append(key)
        examined += 1
        if len(batch) >= _CHUNK:
            await flush()
        if examined >= MAX_EXAMINED:
            truncated = True
            break
    if batch:
        await flush()
    items.sort(key=lambda info: info.finished_at or _EPOCH, reverse=True)
    return JobListing(items[:limit], truncated=truncated or len(items) > limit)


async def list_jobs(
    redis: ArqRedis, queues: Mapping[str, str], state: ListState, *, limit: int
) -> JobListing:
    """Jobs of our queues in one state; finished ones newest first."""
    if state in ("queued", "in_progress"):
        return await _pending(redis, queues, state, limit)
    return await _finished(redis, queues, state, limit)


async def last_result(redis: ArqRedis, job_name: str, queue_key: str) -> JobInfo | None:
    """The newest finished tick of a cron job (ids ``<job_name>:<tick ms>``) on one queue."""
    prefix = f"{result_key_prefix}{job_name}:"
    ticks: list[tuple[int, bytes]] = []
    async for key in redis.scan_iter(match=prefix + "*", count=1000):
        suffix = key[len(prefix) :]
        if suffix.isdigit():
            ticks.append((int(suffix), key))
    for _, key in sorted(ticks, reverse=True):
        raw = await redis.get(key)
        if raw is None:
            continue
        try:
            result = deserialize_result(raw, deserializer=deserialize)
        except DeserializationError:
            continue
        if result.queue_name == queue_key:
            return result_info(result, key[len(result_key_prefix) :].decode(), None)
    return None


# Removes every queued job of one queue that no worker is running, atomically: a job is either
# purged (definition and retry counter deleted, removed from the queue) or left to its worker.
_PURGE = """
local removed = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', ARGV[2] .. id, ARGV[3] .. id)
    removed = removed + 1
  end
end
return removed
"""


async def purge(redis: ArqRedis, queue_key: str) -> int:
    """Drop every queued (not running) job of one queue; returns how many were dropped."""
    reply = redis.eval(
        _PURGE, 1, queue_key, in_progress_key_prefix, job_key_prefix, retry_key_prefix
    )
    return int(await cast(Awaitable[int], reply))


async def queue_size(redis: ArqRedis, queue_key: str) -> int:
    """Jobs waiting or running on one queue (deferred retries included)."""
    return int(await redis.zcard(queue_key))
