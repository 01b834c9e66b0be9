"""Every periodic job of the Response Network, declared once: the schedule that the workers run
and the API lists.

An entry names a job, the queue whose workers run it, what it does and its limits. When it runs
is configured: the outbox sweeper every ``NETSYNC_SWEEP_INTERVAL_S`` seconds, the others by
``NETSYNC_SCHEDULE_<JOB>`` (syntax in ``app.scheduling.cronspec``), all in ``NETSYNC_TIMEZONE``.
The workers bind each name to its code (``jobs.worker`` for the sync queue, ``jobs.periodic``
for the bulk queue); the schedule endpoint and ``netsync inspect schedule`` list the same
entries (``app.operations.service``). A new periodic job is an entry here, its
``schedule_<name>`` setting in ``ScheduleSettings``, and its coroutine in ``jobs.periodic``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import field_validator
from sqlalchemy import func, select

from app.config import ResponseSettings
from app.db import ResponseSession
from app.scheduling.cronspec import CronFields, parse
from app.scheduling.models import CronTick
from netsync.config import CommonSettings

QueueName = Literal["sync", "bulk"]
CRON_PREFIX = "cron:"


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


@dataclass(frozen=True)
class Scheduled:
    """One periodic job: which workers run it, what it does, how long and how often it may try."""

    name: str
    queue: QueueName
    description: str
    #: The arq ``timeout`` of one run; the bulk worker's in-progress expiry follows the longest.
    timeout_s: int
    max_tries: int

    def spec(self, settings: ResponseSettings, schedule: ScheduleSettings | None = None) -> str:
        """The schedule as configured: what operators set and read."""
        if self is SWEEP_OUTBOX:
            return f"*/{sweep_every_s(settings)}s"
        return (schedule or ScheduleSettings()).spec(self.name)

    def fields(
        self, settings: ResponseSettings, schedule: ScheduleSettings | None = None
    ) -> CronFields | None:
        """arq's cron fields; ``None`` for a job switched ``off``."""
        if self is SWEEP_OUTBOX:  # any interval under a minute, the last gap of each minute short
            return CronFields(second=frozenset(range(0, 60, sweep_every_s(settings))))
        return (schedule or ScheduleSettings()).fields(self.name)


def sweep_every_s(settings: ResponseSettings) -> int:
    return max(1, min(59, int(settings.sweep_interval_s)))


SWEEP_OUTBOX = Scheduled(
    "sweep_outbox",
    "sync",
    "Export every committed change that its own sync job did not (Redis down at commit time,"
    " a job out of retries, a crash between two steps).",
    120,
    1,
)
#: The sync queue's one entry, then the bulk worker's: exports and housekeeping.
REGISTRY: tuple[Scheduled, ...] = (
    SWEEP_OUTBOX,
    Scheduled("export_settings", "bulk", "full snapshot of settings", 600, 3),
    Scheduled(
        "export_users",
        "bulk",
        "full snapshot of users (ids, usernames, hashes, profile type, active, versions)",
        600,
        3,
    ),
    Scheduled("export_profile_types", "bulk", "full snapshot of profile types", 600, 3),
    Scheduled(
        "export_results",
        "bulk",
        "results of the jobs finished since the last run: the Request Network's audit trail",
        120,
        3,
    ),
    Scheduled(
        "system_monitoring",
        "bulk",
        "queue depths, worker heartbeats, outbox backlog, exports directory, export ages",
        60,
        1,
    ),
    Scheduled(
        "cache_maintenance", "bulk", "removes orphaned entries from our own Redis queues", 300, 1
    ),
    Scheduled("daily_stats", "bulk", "the day's sync statistics, stored and exported", 300, 3),
    Scheduled(
        "retention_cleanup",
        "bulk",
        "deletes archived files, superseded snapshots and old rows past the retention period",
        600,
        3,
    ),
)
BULK: tuple[Scheduled, ...] = tuple(e for e in REGISTRY if e.queue == "bulk")


def cron_job_name(name: str, namespace: str = "") -> str:
    """arq's name of the cron entry (and so its job ids): ``cron:[<namespace>:]<name>``."""
    return f"{CRON_PREFIX}{namespace}:{name}" if namespace else f"{CRON_PREFIX}{name}"


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
