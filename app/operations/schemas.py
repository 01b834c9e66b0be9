"""What the operations API returns: jobs, dead letters, queues, the schedule, exports."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.queue.states import JobState


class JobOut(BaseModel):
    job_id: str
    state: JobState
    function: str | None = None
    #: ``sync`` or ``bulk``, where known.
    queue: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tries: int | None = None
    result: Any = None
    error: str | None = None
    #: When a queued job is due: later than now for a deferred retry or the next cron tick.
    scheduled_at: datetime | None = None


class JobList(BaseModel):
    status: Literal["queued", "in_progress", "complete", "failed"]
    items: list[JobOut]
    #: More jobs may match than were read; narrow down or look again later.
    truncated: bool


class DeadJobOut(BaseModel):
    job_id: str
    function: str
    queue: str | None
    tries: int
    error: str
    failed_at: datetime
    enqueued_at: datetime | None
    args: list[Any]
    #: ``kwargs`` in JSON (a field of that name would clash with pydantic's constructor).
    keyword_args: dict[str, Any] = Field(serialization_alias="kwargs")


class JobAccepted(BaseModel):
    """The job is queued; follow it with ``GET /api/v1/jobs/{job_id}``."""

    job_id: str
    queue: str
    function: str


class QueueOut(BaseModel):
    name: str
    #: The arq queue name (its Redis key).
    key: str
    #: Jobs waiting or running, deferred retries included.
    jobs: int
    dead: int


class QueuePurged(BaseModel):
    name: str
    removed: int


class ScheduleEntryOut(BaseModel):
    name: str
    #: arq's job name; each tick's job id is ``<job_name>:<tick ms>``.
    job_name: str
    function: str
    queue: str
    description: str
    #: The schedule: six crontab fields (seconds first) or an interval such as ``*/60s``.
    crontab: str
    timezone: str
    run_at_startup: bool
    #: ``None`` when the entry is switched off (``NETSYNC_SCHEDULE_<JOB>=off``).
    next_run: datetime | None
    #: When it last ran (the tick's time for bulk jobs, which record every tick).
    last_run_at: datetime | None = None
    #: The last run's job, where arq still remembers it (sync-queue entries).
    last_run: JobOut | None = None
