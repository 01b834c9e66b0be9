"""Worker settings, start-up and the jobs it runs.

The sync queue carries interactive work only: one ``sync_changes`` job per committed change, and
the outbox sweeper that exports whatever those jobs did not (Redis down at commit time, a job that
ran out of retries, a crash between allocation and publication).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any
from zoneinfo import ZoneInfo

from arq import Retry, cron
from arq.connections import ArqRedis
from arq.cron import CronJob
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import SQLAlchemyError

from app.config import ResponseSettings
from app.db import ResponseSessionMaker, make_sessionmaker
from app.queue import deadletter, serialization
from app.queue.client import SYNC_JOB, JobQueue, QueueUnavailable, arq_client
from app.scheduling.registry import CRON_PREFIX, SWEEP_OUTBOX
from exchange.format import SNAPSHOT_STREAMS
from exchange.sealing import Recipients
from exchange.signing import Signer
from exchange.writer import ensure_dir
from jobs import wakeup
from jobs.numbering import Began, GenerationWatch, RolledBack
from jobs.observe import observed
from jobs.relay import OutboxRelay
from jobs.shutdown import OutageRetry
from netsync.db import make_engine
from netsync.heap import freeze
from netsync.keys import load_export_keys
from netsync.logging import configure_logging
from netsync.redis_conn import connection_pool

log = logging.getLogger(__name__)


def worker_redis(dsn: str, *, queue_name: str) -> ArqRedis:
    """The workers' Redis client: it rides out an outage instead of killing the poll loop
    (every command retries, forever while running and once when a shutdown has begun:
    ``jobs.shutdown``), and a Sentinel URL makes it follow a failover. Replies have no
    deadline, as in arq's own pool: the wake-up listener blocks on its channel."""
    pool = connection_pool(
        dsn,
        connect_timeout_s=2.0,
        socket_timeout_s=None,
        retry=OutageRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=-1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
    )
    return arq_client(pool, queue_name=queue_name)


def retry_delay(job_try: int) -> float:
    """Exponential backoff: 1, 2, 4, 8 … seconds, at most a minute."""
    return float(min(60, 2 ** max(0, job_try - 1)))


def export_keys(settings: ResponseSettings) -> tuple[Signer, Recipients]:
    """The signing key and the recipients, from the settings (generated in development)."""
    return load_export_keys(
        settings.signing_key_path,
        settings.export_recipients_path,
        settings.export_recipients_list,
        state_dir=settings.state_dir,
        development=settings.is_development,
    )


def generation_watch(
    ctx: dict[str, Any], sessions: ResponseSessionMaker, signer: Signer
) -> GenerationWatch:
    """The process's watch for a restored database (``jobs.numbering``): when it begins a new
    generation, snapshots of every entity type are enqueued at once, so the Request side takes
    the restored state without waiting for their schedule (which covers it if Redis is down)."""
    settings: ResponseSettings = ctx["settings"]
    queue = JobQueue(ctx["redis"], sync_queue=settings.sync_queue, bulk_queue=settings.bulk_queue)

    async def snapshot_everything(began: Began) -> None:
        for stream in SNAPSHOT_STREAMS.values():
            name = stream.removeprefix("snapshot_")
            try:
                await queue.enqueue_export(name)
            except QueueUnavailable as exc:
                log.warning(
                    "could not enqueue a snapshot for the new generation; its schedule will run it",
                    extra={"export": name, "generation": began.generation, "error": str(exc)},
                )

    return GenerationWatch(sessions, settings.exports_path, signer, on_begin=snapshot_everything)


async def startup(ctx: dict[str, Any]) -> None:
    settings: ResponseSettings = ctx["settings"]
    configure_logging("worker", level=settings.log_level, fmt=settings.log_format)
    engine = make_engine(settings.database_url, application_name="netsync-worker")
    ensure_dir(settings.exports_path)
    ctx["engine"] = engine
    signer, recipients = export_keys(settings)
    sessions = make_sessionmaker(engine)
    ctx["relay"] = OutboxRelay(
        sessions,
        settings.exports_path,
        signer,
        recipients=recipients,
        batch_size=settings.export_batch_size,
        max_file_bytes=settings.export_max_file_bytes,
        generations=generation_watch(ctx, sessions, signer),
    )
    wakeup.install()
    ctx["wake_task"] = asyncio.create_task(wakeup.listen(ctx["redis"], settings.sync_queue))
    if settings.gc_freeze:  # built what it keeps: the collector's full passes skip it now
        freeze()


async def shutdown(ctx: dict[str, Any]) -> None:
    task: asyncio.Task[None] | None = ctx.get("wake_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if "engine" in ctx:
        await ctx["engine"].dispose()


async def sync_changes(ctx: dict[str, Any], event_id: str) -> dict[str, Any]:
    """Export the file that carries one change; safe to run any number of times."""
    relay: OutboxRelay = ctx["relay"]
    try:
        return await relay.export_event(uuid.UUID(event_id))
    except (OSError, SQLAlchemyError, TimeoutError, RolledBack) as exc:
        delay = retry_delay(ctx["job_try"])
        log.warning(
            "sync failed, retrying",
            extra={"job_id": ctx.get("job_id"), "error": repr(exc), "retry_in_s": delay},
        )
        raise Retry(defer=delay) from exc


async def sweep_outbox(ctx: dict[str, Any]) -> dict[str, int]:
    relay: OutboxRelay = ctx["relay"]
    result = await relay.run()
    if result.events:
        log.info("sweeper exported changes", extra={"events": result.events})
    return {"files": len(result.files), "events": result.events}


def sweeper_cron(settings: ResponseSettings) -> CronJob:
    """The sync queue's periodic entry: the outbox sweeper, also run at each worker's start."""
    entry = SWEEP_OUTBOX
    fields = entry.fields(settings)
    assert fields is not None  # the sweeper is never off
    return cron(
        sweep_outbox,
        name=CRON_PREFIX + entry.name,
        **fields.as_kwargs(),  # type: ignore[arg-type]
        run_at_startup=True,
        unique=True,
        timeout=entry.timeout_s,
        max_tries=entry.max_tries,
        keep_result=settings.job_result_ttl_s,
    )


def worker_settings(settings: ResponseSettings | None = None) -> dict[str, Any]:
    cfg = settings or ResponseSettings()
    worker: dict[str, Any] = {
        "functions": [
            deadletter.register(
                sync_changes,
                name=SYNC_JOB,
                queue=cfg.sync_queue,
                max_tries=cfg.job_max_tries,
                timeout_s=30,
            )
        ],
        # Periodic jobs are declared in app.scheduling.registry, where the API reads them too.
        "cron_jobs": [sweeper_cron(cfg)],
        "timezone": ZoneInfo(cfg.timezone),
        "queue_name": cfg.sync_queue,
        "redis_pool": worker_redis(cfg.redis_dsn, queue_name=cfg.sync_queue),
        **serialization.OPTIONS,  # JSON, never pickle
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"settings": cfg},
        "poll_delay": cfg.worker_poll_delay_s,
        "keep_result": cfg.job_result_ttl_s,
        "max_jobs": 20,
        # On SIGTERM, let running jobs finish (they take milliseconds; exports seconds) before
        # arq cancels and re-queues them. Kubernetes' grace period is longer than this.
        "job_completion_wait": 60,
        "job_timeout": 60,
        "health_check_interval": 10,
    }
    return observed(worker, cfg)
