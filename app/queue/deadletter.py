"""The dead-letter list: jobs that failed for good, kept until an operator retries or discards them.

arq has none: a job that raises anything but ``Retry``, or raises ``Retry`` on its last try, is
marked failed and its result expires with the other results. Job functions are therefore
registered through ``register()``, which wraps them so that such a failure is also recorded here,
with what it takes to run the job again (function, arguments, queue).

In Redis, per queue: a sorted set ``netsync:dead:<queue>`` of job ids scored by the time of death,
and one JSON string per job under ``netsync:dead:<queue>:job:<job_id>``. Namespacing by queue keeps
deployments (and test runs) that share a Redis database apart. Entries do not expire; the oldest
beyond ``MAX_ENTRIES`` per queue are dropped.

``Retry`` keeps its meaning (back off and try again until ``max_tries``). On the last try the
wrapper raises ``RetriesExhausted`` instead of ``Retry``, so arq marks the job failed at once, not
one back-off later, and arq and this list agree. A job cancelled by a worker shutdown on its last
try is failed by arq without running our code, so it is not recorded: the outbox sweeper covers
sync jobs, and the next tick covers cron jobs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from arq import Retry
from arq.worker import Function, func
from redis.asyncio import Redis
from redis.exceptions import RedisError

from netsync import metrics

log = logging.getLogger(__name__)

PREFIX = "netsync:dead:"
MAX_ENTRIES = 10_000
_MAX_ERROR_CHARS = 2000
#: arq's own timeout is a little longer than ours, so ours fires first and is recorded.
_ARQ_TIMEOUT_GRACE_S = 5.0

JobFunction = Callable[..., Coroutine[Any, Any, Any]]


class RetriesExhausted(RuntimeError):
    """The job asked to be retried on its last try."""


def index_key(queue: str) -> str:
    return PREFIX + queue


def entry_key(queue: str, job_id: str) -> str:
    return f"{PREFIX}{queue}:job:{job_id}"


@dataclass(frozen=True)
class DeadJob:
    job_id: str
    function: str
    queue: str
    tries: int
    error: str
    failed_at: datetime
    enqueued_at: datetime | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        # Jobs take ids (strings, numbers): anything else is kept as its repr for reading only.
        return orjson.dumps(asdict(self), default=repr)

    @classmethod
    def from_json(cls, raw: bytes) -> DeadJob:
        data = orjson.loads(raw)
        for name in ("failed_at", "enqueued_at"):
            if data.get(name):
                data[name] = datetime.fromisoformat(data[name])
        return cls(**data)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text[:_MAX_ERROR_CHARS]


class DeadLetters:
    """The dead-letter list of some queues, on one Redis connection."""

    def __init__(self, redis: Redis, *, max_entries: int = MAX_ENTRIES) -> None:
        self.redis = redis
        self.max_entries = max_entries

    async def record(self, job: DeadJob) -> None:
        score = job.failed_at.timestamp() * 1000
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(entry_key(job.queue, job.job_id), job.to_json())
            pipe.zadd(index_key(job.queue), {job.job_id: score})
            await pipe.execute()
        overflow = await self.redis.zrange(index_key(job.queue), 0, -self.max_entries - 1)
        if overflow:
            ids = [i.decode() for i in overflow]
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(index_key(job.queue), *ids)
                pipe.delete(*(entry_key(job.queue, i) for i in ids))
                await pipe.execute()

    async def count(self, queue: str) -> int:
        return int(await self.redis.zcard(index_key(queue)))

    async def list(self, queues: Iterable[str], *, limit: int) -> list[DeadJob]:
        """The newest ``limit`` dead jobs of these queues, newest first."""
        found: list[DeadJob] = []
        for queue in queues:
            ids = [i.decode() for i in await self.redis.zrevrange(index_key(queue), 0, limit - 1)]
            if not ids:
                continue
            raws = await self.redis.mget([entry_key(queue, i) for i in ids])
            found.extend(DeadJob.from_json(raw) for raw in raws if raw is not None)
        found.sort(key=lambda job: job.failed_at, reverse=True)
        return found[:limit]

    async def get(self, queues: Iterable[str], job_id: str) -> DeadJob | None:
        for queue in queues:
            raw = await self.redis.get(entry_key(queue, job_id))
            if raw is not None:
                return DeadJob.from_json(raw)
        return None

    async def take(self, queues: Iterable[str], job_id: str) -> DeadJob | None:
        """Remove and return an entry; of two concurrent takers, exactly one gets it."""
        for queue in queues:
            raw = await self.redis.getdel(entry_key(queue, job_id))
            if raw is not None:
                await self.redis.zrem(index_key(queue), job_id)
                return DeadJob.from_json(raw)
        return None


def dead_lettered(
    coroutine: JobFunction, *, name: str, queue: str, max_tries: int, timeout_s: float | None
) -> JobFunction:
    """Wrap a job function so that its final failure lands in the dead-letter list."""

    @functools.wraps(coroutine)
    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        try:
            if timeout_s is None:
                return await coroutine(ctx, *args, **kwargs)
            async with asyncio.timeout(timeout_s):
                return await coroutine(ctx, *args, **kwargs)
        except Retry as exc:
            if ctx["job_try"] < max_tries:
                raise
            final: Exception = RetriesExhausted(
                f"gave up after {ctx['job_try']} tries: {_describe(exc.__cause__ or exc)}"
            )
            await _bury(ctx, final, name=name, queue=queue, args=args, kwargs=kwargs)
            raise final from exc.__cause__
        except Exception as exc:
            await _bury(ctx, exc, name=name, queue=queue, args=args, kwargs=kwargs)
            raise

    return run


async def _bury(
    ctx: dict[str, Any],
    exc: Exception,
    *,
    name: str,
    queue: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    job = DeadJob(
        job_id=ctx["job_id"],
        function=name,
        queue=queue,
        tries=ctx["job_try"],
        error=_describe(exc),
        failed_at=datetime.now(UTC),
        enqueued_at=ctx.get("enqueue_time"),
        args=list(args),
        kwargs=kwargs,
    )
    try:
        await DeadLetters(ctx["redis"]).record(job)
    except (RedisError, OSError) as error:  # the job's own failure is what matters: re-raised
        log.error("could not record a dead job", extra={"job_id": job.job_id, "error": repr(error)})
    else:
        metrics.JOBS_DEAD_LETTERED.labels(name, queue).inc()
        log.warning(
            "job failed for good",
            extra={"job_id": job.job_id, "function": name, "tries": job.tries, "error": job.error},
        )


def register(
    coroutine: JobFunction,
    *,
    name: str,
    queue: str,
    max_tries: int,
    timeout_s: float | None = None,
    keep_result_s: float | None = None,
) -> Function:
    """An arq ``Function`` whose final failure is dead-lettered: use it for every job function."""
    # the series exists at 0 from the start, so the first dead job is an increase Prometheus sees
    metrics.JOBS_DEAD_LETTERED.labels(name, queue)
    wrapped = dead_lettered(
        coroutine, name=name, queue=queue, max_tries=max_tries, timeout_s=timeout_s
    )
    return func(
        wrapped,
        name=name,
        max_tries=max_tries,
        timeout=None if timeout_s is None else timeout_s + _ARQ_TIMEOUT_GRACE_S,
        keep_result=keep_result_s,
    )
