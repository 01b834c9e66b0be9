"""The registry of periodic jobs: what replaced Celery Beat's schedule, in one readable list.

Each ``Periodic`` entry describes one arq cron job: its name, the job function (a dotted path, so
the API can read the registry without importing the worker), the queue whose workers run it, the
arq cron fields and a sentence for operators. The worker builds its ``cron_jobs`` from it
(``cron_jobs()``), and ``GET /api/v1/schedule`` shows it with the next run computed here and the
last run read from arq's results.

To add a periodic job, append a ``Periodic`` to the list in ``periodic()``. Its arq job ids are
``cron:<name>:<tick ms>`` (unique per tick, so several worker replicas run each tick once), and
its results are kept ``keep_result_s`` (default: the job result TTL), which is also how long the
schedule can tell its last run.

Times are evaluated in ``NETSYNC_TIMEZONE`` (default UTC), the worker's arq ``timezone``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from arq.cron import CronJob, cron, next_cron

from app.config import ResponseSettings

#: One arq cron field: a value, a set of values, or ``None`` for "every".
CronField = int | set[int] | None
QueueName = Literal["sync", "bulk"]
CRON_PREFIX = "cron:"


@dataclass(frozen=True)
class Periodic:
    name: str
    #: Dotted path of the job coroutine, e.g. ``jobs.worker.sweep_outbox``.
    function: str
    queue: QueueName
    description: str
    month: CronField = None
    day: CronField = None
    weekday: CronField = None
    hour: CronField = None
    minute: CronField = None
    second: CronField = 0
    run_at_startup: bool = False
    #: The schedule as an operator configures it (``*/5s``), shown instead of the fields.
    spec: str | None = None
    timeout_s: float = 300
    max_tries: int = 1
    keep_result_s: int | None = None

    @property
    def job_name(self) -> str:
        """arq's function name; arq makes each tick's job id ``<job_name>:<tick ms>``."""
        return CRON_PREFIX + self.name

    def fields(self) -> dict[str, CronField]:
        return {
            "month": self.month,
            "day": self.day,
            "weekday": self.weekday,
            "hour": self.hour,
            "minute": self.minute,
            "second": self.second,
        }

    def crontab(self) -> str:
        """The schedule as configured (``*/5s``), else six crontab fields, seconds first:
        ``0,5,10 * * * * *``."""
        if self.spec is not None:
            return self.spec

        def one(value: CronField) -> str:
            if value is None:
                return "*"
            if isinstance(value, int):
                return str(value)
            return ",".join(str(v) for v in sorted(value))

        order = ("second", "minute", "hour", "day", "month", "weekday")
        return " ".join(one(self.fields()[name]) for name in order)

    def next_run(self, now: datetime) -> datetime:
        """The first tick after ``now`` (an aware datetime in the schedule's timezone)."""
        return next_cron(now, **self.fields())  # type: ignore[arg-type]

    def cron_job(self, settings: ResponseSettings) -> CronJob:
        return cron(
            self.function,
            name=self.job_name,
            **self.fields(),  # type: ignore[arg-type]
            run_at_startup=self.run_at_startup,
            unique=True,
            timeout=self.timeout_s,
            max_tries=self.max_tries,
            keep_result=self.keep_result_s or settings.job_result_ttl_s,
        )


def periodic(settings: ResponseSettings) -> list[Periodic]:
    """Every periodic job of the Response Network."""
    sweep_every = max(1, min(59, settings.sweep_interval_s))
    return [
        Periodic(
            name="sweep_outbox",
            function="jobs.worker.sweep_outbox",
            queue="sync",
            description=(
                "Export every committed change that its own sync job did not (Redis down at "
                "commit time, a job out of retries, a crash between two steps)."
            ),
            second=set(range(0, 60, sweep_every)),
            spec=f"*/{sweep_every}s",
            run_at_startup=True,
            timeout_s=120,
        ),
    ]


def timezone(settings: ResponseSettings) -> ZoneInfo:
    return ZoneInfo(settings.timezone)


def cron_jobs(settings: ResponseSettings, queue: QueueName) -> list[CronJob]:
    """The arq ``cron_jobs`` of the workers of one queue."""
    return [entry.cron_job(settings) for entry in periodic(settings) if entry.queue == queue]
