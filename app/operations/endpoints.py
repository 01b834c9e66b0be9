"""Operators' control of jobs: what ``AsyncResult``, ``celery inspect``, Flower and
``debug_celery.py`` gave in the old system.

- ``/api/v1/jobs``: one job's state, jobs by state, and the dead-letter list (retry, discard);
- ``/api/v1/exports/{name}/run``: run an export now on the bulk queue;
- ``/api/v1/schedule``: every periodic job with its next and last run;
- ``/api/v1/queues``: queue sizes, and purging a queue (with a confirmation).

Reading one job is open to its owner (a sync job of their own change); everything else is for
administrators. A sync job's id is derived from its outbox event, so even a job that never reached
Redis (it was down at commit time) has a true answer: the outbox says whether its change was
exported. Redis being unreachable is a 503, never a 500.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, status
from sqlalchemy import select

from app.deps import AdminUser, CurrentUser, QueueDep, SettingsDep, UowDep
from app.operations.schemas import (
    DeadJobOut,
    JobAccepted,
    JobList,
    JobOut,
    QueueOut,
    QueuePurged,
    ScheduleEntryOut,
)
from app.operations.service import dead_out, job_out, schedule_entries
from app.outbox.models import ExportFile, OutboxEvent
from app.queue.client import EXPORTS, JobInfo, QueueUnavailable, export_job
from netsync.errors import ERROR_RESPONSES, NetsyncError, NotFound, ServiceUnavailable

jobs_router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)
exports_router = APIRouter(prefix="/api/v1/exports", tags=["jobs"], responses=ERROR_RESPONSES)
schedule_router = APIRouter(prefix="/api/v1/schedule", tags=["jobs"], responses=ERROR_RESPONSES)
queues_router = APIRouter(prefix="/api/v1/queues", tags=["jobs"], responses=ERROR_RESPONSES)

JobId = Annotated[str, Path(min_length=1, max_length=256)]
_UNREACHABLE = "the job queue is unreachable; try again shortly"


class ConfirmationRequired(NetsyncError):
    code = "confirmation_required"


# The dead-letter routes come first: ``/jobs/dead`` must not be read as the job ``dead``.


@jobs_router.get("/dead")
async def list_dead_jobs(
    queue: QueueDep, _: AdminUser, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[DeadJobOut]:
    """Jobs that failed for good (an error, or out of retries), newest first."""
    try:
        dead = await queue.dead_jobs(limit=limit)
    except QueueUnavailable as exc:
        raise ServiceUnavailable(_UNREACHABLE) from exc
    return [dead_out(d, queue) for d in dead]


@jobs_router.post("/dead/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED)
async def retry_dead_job(job_id: JobId, queue: QueueDep, _: AdminUser) -> JobAccepted:
    """Run a dead job again with the same function and arguments on the same queue."""
    try:
        dead = await queue.dead_letters.get(queue.queues.values(), job_id)
        new_id = await queue.retry_dead(job_id) if dead is not None else None
    except QueueUnavailable as exc:
        raise ServiceUnavailable(_UNREACHABLE) from exc
    if dead is None or new_id is None:
        raise NotFound(f"no dead job {job_id!r}")
    return JobAccepted(
        job_id=new_id, queue=queue.queue_label(dead.queue) or dead.queue, function=dead.function
    )


@jobs_router.delete("/dead/{job_id}")
async def discard_dead_job(job_id: JobId, queue: QueueDep, _: AdminUser) -> DeadJobOut:
    """Forget a dead job; answers what was discarded."""
    try:
        dead = await queue.discard_dead(job_id)
    except QueueUnavailable as exc:
        raise ServiceUnavailable(_UNREACHABLE) from exc
    if dead is None:
        raise NotFound(f"no dead job {job_id!r}")
    return dead_out(dead, queue)


@jobs_router.get("")
async def list_jobs(
    queue: QueueDep,
    _: AdminUser,
    status: Annotated[Literal["queued", "in_progress", "complete", "failed"], Query()],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> JobList:
    """Jobs of every queue in one state; finished ones (kept ``NETSYNC_JOB_RESULT_TTL_S``)
    newest first."""
    try:
        found = await queue.list_jobs(status, limit=limit)
    except QueueUnavailable as exc:
        raise ServiceUnavailable(_UNREACHABLE) from exc
    return JobList(
        status=status, items=[job_out(i) for i in found.items], truncated=found.truncated
    )


def _event_id(job_id: str) -> uuid.UUID | None:
    prefix, _, rest = job_id.partition(":")
    if prefix != "sync":
        return None
    try:
        return uuid.UUID(rest)
    except ValueError:
        return None


@jobs_router.get("/{job_id}")
async def read_job(job_id: JobId, uow: UowDep, queue: QueueDep, user: CurrentUser) -> JobOut:
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
            raise ServiceUnavailable(_UNREACHABLE) from exc
        info = JobInfo(job_id, "not_found")
    if info.state == "not_found" and event is not None:
        info = await _from_outbox(uow, job_id, event)
    if info.state == "not_found":
        raise NotFound(f"no job {job_id!r}")
    return job_out(info)


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


@exports_router.post("/{name}/run", status_code=status.HTTP_202_ACCEPTED)
async def run_export(
    name: Annotated[str, Path(max_length=64, description=f"One of: {', '.join(EXPORTS)}.")],
    queue: QueueDep,
    _: AdminUser,
) -> JobAccepted:
    """Run an export now, on the bulk queue (never in the way of interactive sync jobs)."""
    if name not in EXPORTS:
        raise NotFound(f"no export {name!r}; there are: {', '.join(EXPORTS)}")
    try:
        job_id = await queue.enqueue_export(name)
    except QueueUnavailable as exc:
        raise ServiceUnavailable(_UNREACHABLE) from exc
    return JobAccepted(job_id=job_id, queue="bulk", function=export_job(name))


@schedule_router.get("")
async def read_schedule(
    queue: QueueDep, settings: SettingsDep, uow: UowDep, _: AdminUser
) -> list[ScheduleEntryOut]:
    """Every periodic job: its schedule, timezone, next run and last run."""
    try:
        return await schedule_entries(queue, settings, uow.session)
    except QueueUnavailable as exc:
        raise ServiceUnavailable(_UNREACHABLE) from exc


@queues_router.get("")
async def list_queues(queue: QueueDep, _: AdminUser) -> list[QueueOut]:
    try:
        sizes = await queue.queue_sizes()
    except QueueUnavailable as exc:
        raise ServiceUnavailable(_UNREACHABLE) from exc
    return [
        QueueOut(name=name, key=queue.queues[name], jobs=jobs, dead=dead)
        for name, (jobs, dead) in sizes.items()
    ]


@queues_router.delete("/{name}")
async def purge_queue(
    name: Annotated[str, Path(max_length=256, description="`sync`, `bulk`, or the queue key.")],
    queue: QueueDep,
    _: AdminUser,
    confirm: Annotated[str | None, Query(max_length=256)] = None,
) -> QueuePurged:
    """Drop every queued job of one queue (running ones finish). ``?confirm=`` must repeat the
    queue's name: purging cannot be undone."""
    key = queue.queue_key(name)
    if key is None:
        raise NotFound(f"no queue {name!r}; there are: {', '.join(queue.queues)}")
    if confirm != name:
        raise ConfirmationRequired(
            f"purging drops every queued job of {name!r} for good; "
            f"repeat the queue's name to confirm: ?confirm={name}"
        )
    try:
        removed = await queue.purge(key)
    except QueueUnavailable as exc:
        raise ServiceUnavailable(_UNREACHABLE) from exc
    return QueuePurged(name=queue.queue_label(key) or name, removed=removed)


router = APIRouter()
for _router in (jobs_router, exports_router, schedule_router, queues_router):
    router.include_router(_router)
