"""What a worker tells operators: job metrics, its own liveness, readiness and a heartbeat.

``observed(settings_dict, ...)`` wraps a ``WorkerSettings`` dict: every job function and cron
job is wrapped to count and time its runs, and start-up/shut-down gain the probe server and the
heartbeat. Wrapping the job coroutines rather than using arq's ``on_job_start``/``after_job_end``
hooks is deliberate: those hooks see neither the function's name nor the outcome.

Outcomes follow arq 0.28's rules. A job that returns succeeded. ``Retry`` is a retry, except on
the last allowed try: arq then gives the job up at its next pickup without calling it, so it
counts as failed here. Any other exception fails the job for good. A cancellation is a retry
(a worker shutting down) unless the job ran for its whole timeout (arq's timeout, a failure).

Liveness is per replica. arq's health-check key is shared by every worker of a queue, so any one
live worker makes all look healthy; instead ``/health`` answers 200 only while this process's
poll loop turns (``jobs.wakeup.last_poll``) or while every job slot is busy (arq's loop then
waits for a free slot, which is saturation, not death). Each live worker also renews
``netsync:workers:<id>`` in Redis, so ``netsync inspect workers`` lists the replicas alive now.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from arq import Retry
from arq.connections import ArqRedis
from arq.cron import CronJob
from arq.typing import WorkerCoroutine
from arq.worker import Function, func
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import ResponseSettings
from app.outbox import service as outbox
from app.queue.client import WORKER_KEY_PREFIX, queue_depth
from jobs import wakeup
from netsync import metrics
from netsync.probes import Probes, ProbeServer, start_probes

log = logging.getLogger(__name__)

Hook = Callable[[dict[str, Any]], Awaitable[None]]

HEARTBEAT_EVERY_S = 5.0
HEARTBEAT_TTL_S = 30
_ARQ_DEFAULT_MAX_TRIES = 5
_ARQ_DEFAULT_MAX_JOBS = 10

_in_flight = 0


def worker_id() -> str:
    """``<hostname>-<pid>-<random>``: unique per process, readable in a listing."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def liveness_threshold(poll_delay_s: float) -> float:
    return max(5 * poll_delay_s, 10.0)


def _wrap(
    coroutine: WorkerCoroutine,
    *,
    name: str,
    queue: str,
    cron: bool,
    max_tries: int,
    timeout_s: float | None,
) -> WorkerCoroutine:
    labels = (name, queue)

    @functools.wraps(coroutine)
    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        global _in_flight
        job_try = int(ctx.get("job_try") or 1)
        metrics.JOBS_STARTED.labels(*labels).inc()
        enqueued: datetime | None = ctx.get("enqueue_time")
        if cron:
            metrics.CRON_LAST_RUN.labels(name).set(time.time())
        elif job_try == 1 and enqueued is not None:
            wait = (datetime.now(UTC) - enqueued).total_seconds()
            metrics.JOB_QUEUE_WAIT.labels(*labels).observe(max(0.0, wait))
        outcome = "failed"
        start = time.perf_counter()
        _in_flight += 1
        try:
            result = await coroutine(ctx, *args, **kwargs)
            outcome = "succeeded"
            return result
        except Retry:
            outcome = "retried" if job_try < max_tries else "failed"
            raise
        except asyncio.CancelledError:
            ran = time.perf_counter() - start
            timed_out = timeout_s is not None and ran >= timeout_s * 0.99
            outcome = "failed" if timed_out else "retried"
            raise
        finally:
            _in_flight -= 1
            elapsed = time.perf_counter() - start
            metrics.JOB_DURATION.labels(*labels).observe(elapsed)
            {
                "succeeded": metrics.JOBS_SUCCEEDED,
                "retried": metrics.JOBS_RETRIED,
                "failed": metrics.JOBS_FAILED,
            }[outcome].labels(*labels).inc()
            if cron and outcome == "succeeded":
                metrics.CRON_LAST_SUCCESS.labels(name).set(time.time())
            quiet = cron and outcome == "succeeded"  # the sweeper succeeds every few seconds
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "job finished",
                extra={
                    "job": name,
                    "queue": queue,
                    "job_id": ctx.get("job_id"),
                    "try": job_try,
                    "outcome": outcome,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )

    return run


def _wrap_function(entry: Any, queue: str, default_tries: int, default_timeout: float) -> Function:
    function: Function = entry if isinstance(entry, Function) else func(entry)
    return dataclasses.replace(
        function,
        coroutine=_wrap(
            function.coroutine,
            name=function.name,
            queue=queue,
            cron=False,
            max_tries=function.max_tries or default_tries,
            timeout_s=function.timeout_s or default_timeout,
        ),
    )


def _wrap_cron(job: CronJob, queue: str, default_timeout: float) -> CronJob:
    return dataclasses.replace(
        job,
        coroutine=_wrap(
            job.coroutine,
            # arq names cron functions ``cron:<entry>``; metrics speak of the entry
            name=job.name.removeprefix("cron:"),
            queue=queue,
            cron=True,
            max_tries=job.max_tries or 1,
            timeout_s=job.timeout_s or default_timeout,
        ),
    )


async def _outbox_backlog(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        pending = await outbox.backlog(conn)
    metrics.OUTBOX_BACKLOG.set(pending.pending)
    metrics.OUTBOX_OLDEST_AGE.set(pending.oldest_age_s())


async def sample(ctx: dict[str, Any], queue: str) -> None:
    """Refresh the gauges sampled on scrape: queue depth, outbox backlog, poll heartbeat."""
    due, deferred = await queue_depth(ctx["redis"], queue)
    metrics.QUEUE_DEPTH.labels(queue).set(due)
    metrics.QUEUE_DEFERRED.labels(queue).set(deferred)
    await _outbox_backlog(ctx["engine"])
    last = wakeup.last_poll()
    if last is not None:
        metrics.WORKER_LAST_POLL.set(time.time() - (time.monotonic() - last))


class _Liveness:
    def __init__(self, wid: str, poll_delay_s: float, max_jobs: int) -> None:
        self.worker_id = wid
        self.threshold = liveness_threshold(poll_delay_s)
        self.max_jobs = max_jobs
        self.started = time.monotonic()

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        last = wakeup.last_poll()
        age = time.monotonic() - (last if last is not None else self.started)
        saturated = _in_flight >= self.max_jobs
        detail = {
            "worker_id": self.worker_id,
            "last_poll_age_s": round(age, 3),
            "threshold_s": self.threshold,
            "jobs_running": _in_flight,
            "saturated": saturated,
        }
        return age <= self.threshold or saturated, detail


async def _heartbeat(redis: ArqRedis, liveness: _Liveness, info: dict[str, Any]) -> None:
    key = WORKER_KEY_PREFIX + liveness.worker_id
    while True:
        alive, detail = liveness()
        if alive:
            value = orjson.dumps({**info, **detail, "seen_at": datetime.now(UTC).isoformat()})
            try:
                async with asyncio.timeout(2):
                    await redis.set(key, value, ex=HEARTBEAT_TTL_S)
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("heartbeat not written", extra={"error": repr(exc)})
        await asyncio.sleep(HEARTBEAT_EVERY_S)


def observed(
    worker: dict[str, Any], settings: ResponseSettings, *, metrics_port: int | None = None
) -> dict[str, Any]:
    """Instrument a ``WorkerSettings`` dict: job metrics, probes and the heartbeat."""
    queue: str = worker["queue_name"]
    default_tries = int(worker.get("max_tries", _ARQ_DEFAULT_MAX_TRIES))
    default_timeout = float(worker.get("job_timeout", 300))
    functions = [
        _wrap_function(f, queue, default_tries, default_timeout) for f in worker["functions"]
    ]
    crons = [_wrap_cron(c, queue, default_timeout) for c in worker.get("cron_jobs") or []]
    port = settings.worker_metrics_port if metrics_port is None else metrics_port
    max_jobs = int(worker.get("max_jobs", _ARQ_DEFAULT_MAX_JOBS))
    poll_delay = float(worker.get("poll_delay", 0.5))
    inner_startup: Hook | None = worker.get("on_startup")
    inner_shutdown: Hook | None = worker.get("on_shutdown")

    async def startup(ctx: dict[str, Any]) -> None:
        if inner_startup is not None:
            await inner_startup(ctx)
        wid = worker_id()
        liveness = _Liveness(wid, poll_delay, max_jobs)
        metrics.SCHEDULE_ENTRIES.set(len(crons))
        redis: ArqRedis = ctx["redis"]
        engine: AsyncEngine = ctx["engine"]

        async def database() -> bool:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True

        async def redis_ok() -> bool:
            return bool(await redis.ping())

        probes = Probes(
            liveness=liveness,
            readiness={"database": database, "redis": redis_ok},
            refresh=lambda: sample(ctx, queue),
        )
        ctx["worker_id"] = wid
        ctx["probe_server"] = await start_probes(
            probes, host=settings.metrics_host, port=port, name="worker"
        )
        info = {"id": wid, "queue": queue, "host": socket.gethostname(), "pid": os.getpid()}
        info["started_at"] = datetime.now(UTC).isoformat()
        ctx["heartbeat_task"] = asyncio.create_task(_heartbeat(redis, liveness, info))
        log.info("worker observed", extra={"worker_id": wid, "metrics_port": port or None})

    async def shutdown(ctx: dict[str, Any]) -> None:
        task: asyncio.Task[None] | None = ctx.pop("heartbeat_task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(2):
                    await ctx["redis"].delete(WORKER_KEY_PREFIX + ctx["worker_id"])
        server: ProbeServer | None = ctx.pop("probe_server", None)
        if server is not None:
            await server.stop()
        if inner_shutdown is not None:
            await inner_shutdown(ctx)

    return {
        **worker,
        "functions": functions,
        "cron_jobs": crons,
        "on_startup": startup,
        "on_shutdown": shutdown,
    }
