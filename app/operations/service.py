"""What the operations endpoints and the ``netsync`` CLI both read, computed in one place.

``GET /api/v1/schedule``, ``netsync inspect schedule``, ``netsync inspect scheduled`` and the
dashboard must agree on when each periodic job runs next and last ran; they all call
``schedule_entries``. It raises ``QueueUnavailable`` when Redis does not answer: each caller says
so in its own way (a 503, an exit code).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from app.config import ResponseSettings
from app.db import ResponseSession
from app.operations.schemas import DeadJobOut, JobOut, ScheduleEntryOut
from app.queue.client import DeadJob, JobInfo, JobQueue
from app.scheduling import registry
from app.scheduling.registry import ScheduleSettings


def job_out(info: JobInfo) -> JobOut:
    return JobOut(**info.__dict__)


def dead_out(dead: DeadJob, queue: JobQueue) -> DeadJobOut:
    """A dead job as operators read it: its queue by short name (``sync``) where it is ours."""
    return DeadJobOut(
        job_id=dead.job_id,
        function=dead.function,
        queue=queue.queue_label(dead.queue) or dead.queue,
        tries=dead.tries,
        error=dead.error,
        failed_at=dead.failed_at,
        enqueued_at=dead.enqueued_at,
        args=dead.args,
        keyword_args=dead.kwargs,
    )


async def schedule_entries(
    queue: JobQueue,
    settings: ResponseSettings,
    session: ResponseSession,
    *,
    now: datetime | None = None,
) -> list[ScheduleEntryOut]:
    """Every periodic job of the registry (``app.scheduling.registry``): its schedule as
    configured, timezone, next run and last run. The sync queue's entry (the outbox sweeper) has
    its last run read from arq's results; the bulk entries from the ``cron_ticks`` table that
    guards each tick.
    """
    tz = ZoneInfo(settings.timezone)
    now = (now or datetime.now(tz)).astimezone(tz)
    bulk = ScheduleSettings()
    ticks = await registry.last_runs(session)
    entries = []
    for entry in registry.REGISTRY:
        fields = entry.fields(settings, bulk)
        common = {
            "name": entry.name,
            "queue": entry.queue,
            "description": entry.description,
            "crontab": entry.spec(settings, bulk),
            "timezone": settings.timezone,
            "next_run": fields.next_after(now) if fields is not None else None,
        }
        if entry.queue == "sync":
            job_name = registry.CRON_PREFIX + entry.name
            last = await queue.last_run(job_name, queue.queues[entry.queue])
            entries.append(
                ScheduleEntryOut(
                    **common,
                    job_name=job_name,
                    function=f"jobs.worker.{entry.name}",
                    run_at_startup=True,
                    last_run_at=(last.finished_at or last.enqueued_at) if last else None,
                    last_run=job_out(last) if last is not None else None,
                )
            )
        else:
            entries.append(
                ScheduleEntryOut(
                    **common,
                    job_name=registry.cron_job_name(entry.name, bulk.cron_namespace),
                    function=f"jobs.periodic.{entry.name}",
                    run_at_startup=False,
                    last_run_at=ticks.get(entry.name),
                )
            )
    return entries
