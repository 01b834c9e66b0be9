"""The bulk worker: ``arq jobs.BulkWorkerSettings`` runs the schedule and on-demand exports.

It is separate from the interactive worker (``jobs.WorkerSettings``, the sync queue) for two
reasons: password syncs must never wait behind a snapshot of a million rows, and arq expires a
killed job's in-progress key only after the *longest* timeout registered in that worker (+10 s),
so the exports' ten-minute timeouts would delay the recovery of every password job.

Every periodic job is registered twice: as a cron entry (``cron:<name>``, the schedule) and as a
plain function (``<name>``, what ``POST /api/v1/exports/{name}/run`` enqueues on the bulk queue).
Both run through the same tick guard and no-overlap lock (``jobs.ticks``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, cast

from arq import cron
from arq.typing import WorkerCoroutine
from sqlalchemy.exc import SQLAlchemyError

from app.config import ResponseSettings
from app.db import make_sessionmaker
from app.queue import deadletter, serialization
from app.scheduling.registry import BULK, ScheduleSettings, cron_job_name
from exchange.writer import ensure_dir
from jobs import wakeup
from jobs.observe import observed
from jobs.periodic import job_function, report_missed
from jobs.ticks import TOMBSTONE_S
from jobs.worker import export_keys, generation_watch, shutdown, worker_redis
from netsync.db import make_engine
from netsync.logging import configure_logging

log = logging.getLogger(__name__)


async def startup(ctx: dict[str, Any]) -> None:
    settings: ResponseSettings = ctx["settings"]
    schedule: ScheduleSettings = ctx["schedule"]
    configure_logging("bulk-worker", level=settings.log_level, fmt=settings.log_format)
    engine = make_engine(settings.database_url, application_name="netsync-bulk-worker")
    ensure_dir(settings.exports_path)
    ctx["engine"] = engine
    ctx["sessions"] = make_sessionmaker(engine)
    ctx["exports_dir"] = settings.exports_path
    ctx["signer"], ctx["recipients"] = export_keys(settings)
    ctx["generations"] = generation_watch(ctx, ctx["sessions"], ctx["signer"])
    wakeup.install()
    ctx["wake_task"] = asyncio.create_task(wakeup.listen(ctx["redis"], settings.bulk_queue))
    try:
        await report_missed(ctx["sessions"], schedule, datetime.now(UTC))
    except (SQLAlchemyError, OSError) as exc:
        log.warning("could not compare the schedule with past ticks", extra={"error": repr(exc)})


def _arq(values: frozenset[int] | None) -> set[int] | None:
    return set(values) if values is not None else None


def bulk_worker_settings(
    settings: ResponseSettings | None = None, schedule: ScheduleSettings | None = None
) -> dict[str, Any]:
    cfg = settings or ResponseSettings()
    sch = schedule or ScheduleSettings()
    # Every job goes through the dead-letter wrapper: run_guarded re-raises the last failure of a
    # job that ran out of tries, and the wrapper records it in the dead-letter list.
    functions = [
        deadletter.register(
            cast(WorkerCoroutine, job_function(job)),
            name=job.name,
            queue=cfg.bulk_queue,
            max_tries=job.max_tries,
            timeout_s=job.timeout_s,
            keep_result_s=cfg.job_result_ttl_s,
        )
        for job in BULK
    ]
    cron_jobs = []
    for job in BULK:
        fields = sch.fields(job.name)
        if fields is None:
            continue
        cron_jobs.append(
            cron(
                cast(
                    WorkerCoroutine,
                    deadletter.dead_lettered(
                        job_function(job),
                        name=job.name,
                        queue=cfg.bulk_queue,
                        max_tries=job.max_tries,
                        timeout_s=None,
                    ),
                ),
                name=cron_job_name(job.name, sch.cron_namespace),
                month=_arq(fields.month),
                day=_arq(fields.day),
                weekday=_arq(fields.weekday),
                hour=_arq(fields.hour),
                minute=_arq(fields.minute),
                second=_arq(fields.second),
                microsecond=0,
                run_at_startup=False,  # once per replica start: never for periodic jobs
                unique=True,
                timeout=job.timeout_s,
                keep_result=TOMBSTONE_S,  # the tombstone that keeps a finished tick finished
                max_tries=job.max_tries,
            )
        )
    worker: dict[str, Any] = {
        "functions": functions,
        "cron_jobs": cron_jobs,
        "queue_name": cfg.bulk_queue,
        "redis_pool": worker_redis(cfg.redis_dsn, queue_name=cfg.bulk_queue),
        **serialization.OPTIONS,  # JSON, never pickle
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"settings": cfg, "schedule": sch},
        "timezone": sch.tz,
        "poll_delay": cfg.worker_poll_delay_s,
        "keep_result": cfg.job_result_ttl_s,
        "max_jobs": 4,
        "job_timeout": 600,
        "job_completion_wait": 60,
        "health_check_interval": 10,
    }
    return observed(worker, cfg, metrics_port=cfg.bulk_worker_metrics_port)
