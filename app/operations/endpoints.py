"""``GET /api/v1/jobs/{job_id}``: the state of a job, as ``AsyncResult(id).state`` told.

A sync job's id is derived from its outbox event, so even a job that never reached Redis (it was
down at commit time) has a true answer: the outbox says whether its change was exported.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import select

from app.deps import CurrentUser, QueueDep, UowDep
from app.outbox.models import ExportFile, OutboxEvent
from jobs.client import JobInfo, JobState, QueueUnavailable
from netsync.errors import ERROR_RESPONSES, NotFound, ServiceUnavailable

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


class JobOut(BaseModel):
    job_id: str
    state: JobState
    function: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tries: int | None = None
    result: Any = None
    error: str | None = None


def _event_id(job_id: str) -> uuid.UUID | None:
    prefix, _, rest = job_id.partition(":")
    if prefix != "sync":
        return None
    try:
        return uuid.UUID(rest)
    except ValueError:
        return None


@router.get("/{job_id}")
async def read_job(job_id: str, uow: UowDep, queue: QueueDep, user: CurrentUser) -> JobOut:
    event_id = _event_id(job_id)
    event = None
    if event_id is not None:
        event = await uow.session.scalar(
            select(OutboxEvent).where(OutboxEvent.event_id == event_id)
        )
    if user.role != "admin" and (event is None or event.entity_id != user.id):
        raise NotFound(f"no job {job_id!r}")
    try:
        info = await queue.info(job_id)
    except QueueUnavailable as exc:
        if event is None:
            raise ServiceUnavailable("the job queue is unreachable; try again shortly") from exc
        info = JobInfo(job_id, "not_found")
    if info.state == "not_found" and event is not None:
        info = await _from_outbox(uow, job_id, event)
    if info.state == "not_found":
        raise NotFound(f"no job {job_id!r}")
    return JobOut(**info.__dict__)


async def _from_outbox(uow: UowDep, job_id: str, event: OutboxEvent) -> JobInfo:
    if event.export_seq is None or event.export_stream is None:
        return JobInfo(job_id, "queued", function="sync_changes", enqueued_at=event.created_at)
    file = await uow.session.get(ExportFile, (event.export_stream, event.export_seq))
    if file is None or file.published_at is None:
        return JobInfo(job_id, "in_progress", function="sync_changes")
    return JobInfo(
        job_id,
        "complete",
        function="sync_changes",
        enqueued_at=event.created_at,
        finished_at=file.published_at,
        result={"event_id": str(event.event_id), "stream": file.stream, "seq": file.seq},
    )
