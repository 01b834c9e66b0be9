"""The periodic jobs: what runs when (the schedule), and the jobs themselves.

``PERIODIC_JOBS`` is the registry the schedule endpoint reads; ``ScheduleSettings`` reads the
overrides (``NETSYNC_SCHEDULE_<JOB>``, syntax in ``jobs.cronspec``) and the time zone. Every job
runs through ``jobs.ticks.run_guarded`` (exactly once per tick, no overlap, retries with backoff)
in the bulk worker (``jobs.bulk``), never in the interactive sync worker.

Missed ticks (no worker was running) are not replayed: arq schedules only from the present, and a
starting worker compares the last recorded tick of each job with the schedule and logs what was
skipped (``report_missed``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import field_validator
from sqlalchemy import func, select

from app.db import ResponseSession, ResponseSessionMaker
from app.scheduling.models import CronTick
from jobs import maintenance, results, snapshots
from jobs.cronspec import CronFields, parse
from jobs.ticks import run_guarded
from netsync.config import CommonSettings

log = logging.getLogger(__name__)


class ScheduleSettings(CommonSettings):
    """``NETSYNC_SCHEDULE_*``: when each periodic job runs, in which time zone."""

    #: ``NETSYNC_TIMEZONE``, shared with the Response settings: one zone for every schedule.
    timezone: str = "UTC"
    schedule_export_settings: str = "*/60s"
    schedule_export_users: str = "*/60s"
    schedule_export_profile_types: str = "*/60s"
    schedule_export_results: str = "*/120s"
    schedule_system_monitoring: str = "*/300s"
    schedule_cache_maintenance: str = "0 * * * *"
    schedule_daily_stats: str = "0 2 * * *"
    schedule_retention_cleanup: str = "0 3 * * *"
    #: Archived files, old snapshots and bookkeeping rows older than this are deleted.
    retention_days: int = 7
    #: The importer's archive directory when it is not ``<exports>/archive``.
    archive_dir: Path | None = None
    #: An export older than this (or an outbox change waiting this long) makes the sync "stale".
    monitoring_stale_after_s: float = 600.0
    #: Prefix of the cron job ids, for deployments that share one Redis database.
    cron_namespace: str = ""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        ZoneInfo(value)  # raises for an unknown zone
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def spec(self, name: str) -> str:
        value: str = getattr(self, f"schedule_{name}")
        return value

    def fields(self, name: str) -> CronFields | None:
        return parse(self.spec(name))

    @property
    def archive_path(self) -> Path:
        return self.archive_dir or self.exports_path / "archive"


Job = Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    description: str
    #: The arq ``timeout`` of one run; the bulk worker's in-progress expiry follows the longest.
    timeout_s: int
    max_tries: int
    run: Job


@dataclass(frozen=True)
class ScheduleEntry:
    """One row of the schedule as configured: what the schedule endpoint lists."""

    name: str
    queue: str
    spec: str
    fields: CronFields | None
    timezone: str
    description: str


# -- the jobs ---------------------------------------------------------------------------------


def _snapshot(entity: str) -> Job:
    async def run(ctx: dict[str, Any]) -> dict[str, Any]:
        done = await snapshots.export_snapshot(
            ctx["engine"],
            ctx["sessions"],
            ctx["exports_dir"],
            ctx["signer"],
            entity,
            recipients=ctx["recipients"],
            generations=ctx.get("generations"),
        )
        return done.summary()

    return run


def _queues(ctx: dict[str, Any]) -> maintenance.Queues:
    cfg = ctx["settings"]
    return maintenance.Queues(sync=cfg.sync_queue, bulk=cfg.bulk_queue)


async def _export_results(ctx: dict[str, Any]) -> dict[str, Any]:
    return await results.export_results(
        ctx["redis"],
        ctx["sessions"],
        ctx["exports_dir"],
        ctx["signer"],
        _queues(ctx).names,
        recipients=ctx["recipients"],
        generations=ctx.get("generations"),
    )


async def _system_monitoring(ctx: dict[str, Any]) -> dict[str, Any]:
    schedule: ScheduleSettings = ctx["schedule"]
    return await maintenance.system_monitoring(
        ctx["redis"],
        ctx["sessions"],
        ctx["exports_dir"],
        _queues(ctx),
        stale_after_s=schedule.monitoring_stale_after_s,
    )


async def _cache_maintenance(ctx: dict[str, Any]) -> dict[str, Any]:
    return dict(await maintenance.cache_maintenance(ctx["redis"], _queues(ctx)))


async def _daily_stats(ctx: dict[str, Any]) -> dict[str, Any]:
    """Statistics of the day before the run (02:00 runs sum up yesterday)."""
    schedule: ScheduleSettings = ctx["schedule"]
    day = (datetime.now(schedule.tz) - timedelta(days=1)).date()
    return await maintenance.daily_stats(ctx["sessions"], day, schedule.tz)


async def _retention_cleanup(ctx: dict[str, Any]) -> dict[str, Any]:
    schedule: ScheduleSettings = ctx["schedule"]
    return dict(
        await maintenance.retention_cleanup(
            ctx["sessions"], ctx["exports_dir"], schedule.archive_path, schedule.retention_days
        )
    )


PERIODIC_JOBS: list[PeriodicJob] = [
    PeriodicJob("export_settings", "full snapshot of settings", 600, 3, _snapshot("setting")),
    PeriodicJob(
        "export_users",
        "full snapshot of users (ids, usernames, hashes, profile type, active, versions)",
        600,
        3,
        _snapshot("user"),
    ),
    PeriodicJob(
        "export_profile_types",
        "full snapshot of profile types",
        600,
        3,
        _snapshot("profile_type"),
    ),
    PeriodicJob(
        "export_results",
        "results of the jobs finished since the last run: the Request Network's audit trail",
        120,
        3,
        _export_results,
    ),
    PeriodicJob(
        "system_monitoring",
        "queue depths, worker heartbeats, outbox backlog, exports directory, export ages",
        60,
        1,
        _system_monitoring,
    ),
    PeriodicJob(
        "cache_maintenance",
        "removes orphaned entries from our own Redis queues",
        300,
        1,
        _cache_maintenance,
    ),
    PeriodicJob(
        "daily_stats", "the day's sync statistics, stored and exported", 300, 3, _daily_stats
    ),
    PeriodicJob(
        "retention_cleanup",
        "deletes archived files, superseded snapshots and old rows past the retention period",
        600,
        3,
        _retention_cleanup,
    ),
]

JOBS_BY_NAME = {job.name: job for job in PERIODIC_JOBS}


def job_function(job: PeriodicJob) -> Job:
    """The arq coroutine of a periodic job: its tick guard around its work."""

    async def periodic(ctx: dict[str, Any]) -> dict[str, Any]:
        return await run_guarded(ctx, job.name, job.run, max_tries=job.max_tries)

    periodic.__qualname__ = periodic.__name__ = job.name
    return periodic


def schedule_entries(schedule: ScheduleSettings, bulk_queue: str) -> list[ScheduleEntry]:
    return [
        ScheduleEntry(
            job.name,
            bulk_queue,
            schedule.spec(job.name),
            schedule.fields(job.name),
            schedule.timezone,
            job.description,
        )
        for job in PERIODIC_JOBS
    ]


# -- what the schedule remembers ------------------------------------------------------------


async def last_runs(session: ResponseSession) -> dict[str, datetime]:
    """The latest tick each job ran (or is running), by job name; skipped ticks do not count."""
    rows = await session.execute(
        select(CronTick.name, func.max(CronTick.tick_at))
        .where(CronTick.status.in_(("done", "failed", "running", "retrying")))
        .group_by(CronTick.name)
    )
    return {name: tick for name, tick in rows.all()}  # noqa: C416 - rows are not pairs to mypy


async def last_ticks(session: ResponseSession) -> dict[str, datetime]:
    """The latest recorded tick of each job, whatever became of it."""
    rows = await session.execute(
        select(CronTick.name, func.max(CronTick.tick_at)).group_by(CronTick.name)
    )
    return {name: tick for name, tick in rows.all()}  # noqa: C416 - rows are not pairs to mypy


#: Ticks this recent may still be on their way through another worker: not "missed" yet.
MISSED_GRACE = timedelta(seconds=5)


async def report_missed(
    sessions: ResponseSessionMaker, schedule: ScheduleSettings, now: datetime
) -> dict[str, int]:
    """Log (and return) how many ticks of each job passed with no worker to run them."""
    async with sessions() as session:
        last = await last_ticks(session)
    missed: dict[str, int] = {}
    for job in PERIODIC_JOBS:
        fields = schedule.fields(job.name)
        previous = last.get(job.name)
        if fields is None or previous is None:
            continue
        skipped = list(
            fields.ticks(
                previous.astimezone(schedule.tz),
                now.astimezone(schedule.tz) - MISSED_GRACE,
                limit=10_000,
            )
        )
        if skipped:
            missed[job.name] = len(skipped)
            log.warning(
                "ticks missed while no worker ran: skipped, not replayed",
                extra={
                    "job": job.name,
                    "missed": len(skipped),
                    "at_least": len(skipped) >= 10_000,
                    "last_tick": previous.isoformat(),
                    "first_missed": skipped[0].isoformat(),
                },
            )
    return missed
