"""What a job's state looks like to the rest of the code, independent of arq's types."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from arq.jobs import JobResult

JobState = Literal["queued", "in_progress", "complete", "failed", "not_found"]


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: JobState
    function: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tries: int | None = None
    result: Any = None
    error: str | None = None
    #: ``sync`` or ``bulk`` where known.
    queue: str | None = None
    #: When a queued job is due: later than now for a deferred retry or the next cron tick.
    scheduled_at: datetime | None = None


def result_info(result: JobResult, job_id: str, queue: str | None) -> JobInfo:
    ok = result.success
    return JobInfo(
        job_id,
        "complete" if ok else "failed",
        function=result.function,
        enqueued_at=result.enqueue_time,
        started_at=result.start_time,
        finished_at=result.finish_time,
        tries=result.job_try,
        result=result.result if ok else None,
        error=None if ok else _error_text(result.result),
        queue=queue,
    )


def _error_text(value: object) -> str:
    """A failed job's error: JSON carries it as text already (``app.queue.serialization``)."""
    return value if isinstance(value, str) else repr(value)
