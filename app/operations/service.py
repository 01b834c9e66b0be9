"""What the operations endpoints and the ``netsync`` CLI both read, computed in one place.

``GET /api/v1/schedule``, ``netsync inspect schedule``, ``netsync inspect scheduled`` and the
dashboard must agree on when each periodic job runs next and last ran; they all call
``schedule_entries``. It raises ``QueueUnavailable`` when Redis does not answer: each caller says
so in its own way (a 503, an exit code).
"""

from __future__ import annotations

from datetime import datetime

from app.config import ResponseSettings
from app.db import ResponseSession
from app.operations.schemas import DeadJobOut, JobOut, ScheduleEntryOut
from jobs import periodic, schedule
from jobs.client import DeadJob, JobInfo, JobQueue
from jobs.periodic import ScheduleSettings
from jobs.ticks import cron_job_name


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
    """Every periodic job: its schedule, timezone, next run and last run.

    Sync-queue entries (the outbox sweeper) come from ``jobs.schedule``, with their last run read
    from arq's results; bulk entries (exports and housekeeping) from ``jobs.periodic``, with their
    last run read from the ``cron_ticks`` table that guards each tick.
    """
    tz = schedule.timezone(settings)
    now = (now or datetime.now(tz)).astimezone(tz)
    entries = []
    for entry in schedule.periodic(settings):
        last = await queue.last_run(entry.job_name, queue.queues[entry.queue])
        entries.append(
            ScheduleEntryOut(
                name=entry.name,
                job_name=entry.job_name,
                function=entry.function,
                queue=entry.queue,
                description=entry.description,
                crontab=entry.crontab(),
                timezone=settings.timezone,
                run_at_startup=entry.run_at_startup,
                next_run=entry.next_run(now),
                last_run_at=(last.finished_at or last.enqueued_at) if last else None,
                last_run=job_out(last) if last is not None else None,
            )
        )
    bulk = ScheduleSettings()
    last_ticks = await periodic.last_runs(session)
    for job in periodic.PERIODIC_JOBS:
        fields = bulk.fields(job.name)
        entries.append(
            ScheduleEntryOut(
                name=job.name,
                job_name=cron_job_name(job.name, bulk.cron_namespace),
                function=f"jobs.periodic.{job.name}",
                queue="bulk",
                description=job.description,
                crontab=bulk.spec(job.name),
                timezone=settings.timezone,
                run_at_startup=False,
                next_run=fields.next_after(now) if fields is not None else None,
                last_run_at=last_ticks.get(job.name),
            )
        )
    return entries
