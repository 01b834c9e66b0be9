"""``netsync inspect …``: the effective configuration, and the jobs and workers Redis knows.

Configuration is printed as every process would read it (environment, ``.netsync/embedded.env``,
defaults), with secrets masked: ``SecretStr`` values and the password of any URL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import typer
from pydantic import SecretStr

from app.config import ResponseSettings
from app.operations.schemas import DeadJobOut, ScheduleEntryOut
from app.operations.service import dead_out, job_out, schedule_entries
from app.queue.client import JobInfo, list_active, list_queued, list_workers, redis_pool
from app.queue.listing import ListState
from importer.config import RequestSettings
from netsync.config import CommonSettings, ConfigurationError
from ops.cli.connect import job_queue, response_session
from ops.cli.output import JsonOption, err, moment, print_json, print_table, run

app = typer.Typer(
    help="Look at the configuration, the queues and the workers.", no_args_is_help=True
)

MASK = "********"


def mask_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:********@host/db``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def _shown(name: str, value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else None
    if isinstance(value, str) and name.endswith("_url"):
        return mask_url(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _derived(response: ResponseSettings, request: RequestSettings) -> dict[str, Any]:
    """Paths the processes compute when the variable is unset."""
    derived: dict[str, Any] = {
        "NETSYNC_ARCHIVE_DIR": str(request.archive_path),
        "NETSYNC_QUARANTINE_DIR": str(request.quarantine_path),
        "NETSYNC_TRUSTED_KEYS_DIR": str(request.trusted_keys_path or "") or None,
    }
    try:
        derived["NETSYNC_SIGNING_KEY_FILE"] = str(response.signing_key_path)
    except ConfigurationError as exc:
        derived["NETSYNC_SIGNING_KEY_FILE"] = f"<{exc}>"
    return derived


def effective_config() -> list[dict[str, Any]]:
    response, request = ResponseSettings(), RequestSettings()
    common = set(CommonSettings.model_fields)
    rows: dict[str, dict[str, Any]] = {}
    for settings, used_by in ((response, "response"), (request, "request")):
        for name in type(settings).model_fields:
            variable = f"NETSYNC_{name.upper()}"
            scope = f"{used_by} network"
            if name in common:
                scope = "all"
            elif variable in rows:  # read by both networks (e.g. the Request API's token)
                scope = "both networks"
            rows[variable] = {
                "variable": variable,
                "value": _shown(name, getattr(settings, name)),
                "used_by": scope,
            }
    for variable, value in _derived(response, request).items():
        if rows[variable]["value"] is None:
            rows[variable]["value"] = value
    return sorted(rows.values(), key=lambda r: (r["used_by"] != "all", r["variable"]))


@app.command("config")
def config(as_json: bool = JsonOption) -> None:
    """The effective configuration of every process, secrets masked."""
    rows = effective_config()
    if as_json:
        print_json({r["variable"]: r["value"] for r in rows})
        return
    print_table(
        "effective configuration",
        ["variable", "value", "used by"],
        ([r["variable"], r["value"], r["used_by"]] for r in rows),
    )


def _job_rows(jobs: list[JobInfo]) -> list[list[Any]]:
    return [[j.job_id, j.function, j.enqueued_at, j.tries] for j in jobs]


def _job_json(jobs: list[JobInfo]) -> list[dict[str, Any]]:
    return [
        {
            "job_id": j.job_id,
            "state": j.state,
            "function": j.function,
            "enqueued_at": j.enqueued_at,
            "tries": j.tries,
        }
        for j in jobs
    ]


async def _from_redis(what: str, queue: str | None, limit: int) -> tuple[str, list[Any]]:
    settings = ResponseSettings()
    # the short names the API and the dashboard use, or a queue key as it is in Redis
    short = {"sync": settings.sync_queue, "bulk": settings.bulk_queue}
    name = short.get(queue or "sync", queue or settings.sync_queue)
    redis = redis_pool(settings.redis_dsn, queue_name=name)
    try:
        if what == "queued":
            return name, await list_queued(redis, name, limit=limit)
        if what == "active":
            return name, await list_active(redis, limit=limit)
        return name, await list_workers(redis)
    finally:
        await redis.aclose(close_connection_pool=True)


QueueOption = typer.Option(
    None, "--queue", help="sync (the default), bulk, or a queue key as it is in Redis."
)
LimitOption = typer.Option(1000, "--limit", min=1, help="Show at most this many jobs.")


@app.command("queued")
def queued(
    queue: str | None = QueueOption, limit: int = LimitOption, as_json: bool = JsonOption
) -> None:
    """Jobs waiting in a queue, next to run first."""
    name, jobs = run(_from_redis("queued", queue, limit))
    if as_json:
        print_json(_job_json(jobs))
        return
    print_table(f"queued on {name}", ["job id", "function", "enqueued", "tries"], _job_rows(jobs))


@app.command("active")
def active(limit: int = LimitOption, as_json: bool = JsonOption) -> None:
    """Jobs a worker is running now (on any queue)."""
    _, jobs = run(_from_redis("active", None, limit))
    if as_json:
        print_json(_job_json(jobs))
        return
    print_table("running", ["job id", "function", "enqueued", "try"], _job_rows(jobs))


@app.command("workers")
def workers(as_json: bool = JsonOption) -> None:
    """Workers alive now, from their heartbeats in Redis."""
    _, found = run(_from_redis("workers", None, 0))
    if as_json:
        print_json(found)
        return
    fields = ("id", "queue", "pid", "started_at", "last_poll_age_s", "jobs_running")
    print_table(
        "live workers",
        ["worker id", "queue", "pid", "started", "last poll age (s)", "running"],
        ([w.get(f) for f in fields] for w in found),
    )


# -- what the API's operations endpoints show, read through the same code --------------------


Row = dict[str, Any]


class ResultState(StrEnum):
    complete = "complete"
    failed = "failed"
    all = "all"


_RESULT_STATES: dict[ResultState, list[ListState]] = {
    ResultState.complete: ["complete"],
    ResultState.failed: ["failed"],
    ResultState.all: ["complete", "failed"],
}


def _due(due_at: datetime, kind: str, name: str, job: JobInfo | ScheduleEntryOut) -> Row:
    return {
        "due_at": due_at,
        "kind": kind,
        "name": name,
        "function": job.function,
        "queue": job.queue,
        "tries": job.tries if isinstance(job, JobInfo) else None,
    }


async def _scheduled(limit: int) -> tuple[list[Row], bool]:
    settings = ResponseSettings()
    async with job_queue(settings) as queue, response_session(settings) as session:
        deferred = await queue.deferred_jobs(limit=limit)
        entries = await schedule_entries(queue, settings, session)
    due = [(j.scheduled_at, _due(j.scheduled_at, "deferred", j.job_id, j))
           for j in deferred.items if j.scheduled_at is not None]  # fmt: skip
    # the next tick of each entry; switched-off entries have none
    due += [(e.next_run, _due(e.next_run, "cron", e.job_name, e))
            for e in entries if e.next_run is not None]  # fmt: skip
    due.sort(key=lambda pair: pair[0])
    return [row for _, row in due], deferred.truncated


@app.command("scheduled")
def scheduled(limit: int = LimitOption, as_json: bool = JsonOption) -> None:
    """Jobs due later, soonest first: deferred jobs (retries in backoff, cron ticks already
    enqueued) on both queues, and the next tick of every periodic entry."""
    rows, truncated = run(_scheduled(limit))
    if as_json:
        print_json(rows)
        return
    print_table(
        "scheduled",
        ["due", "kind", "job id / cron job", "function", "queue", "tries"],
        ([moment(r["due_at"]), r["kind"], r["name"], r["function"], r["queue"], r["tries"]]
         for r in rows),
    )  # fmt: skip
    if truncated:
        err.print(f"more than {limit} deferred jobs; showing the first (--limit)")


async def _results(state: ResultState, limit: int) -> list[JobInfo]:
    found: list[JobInfo] = []
    async with job_queue(ResponseSettings()) as queue:
        for one in _RESULT_STATES[state]:
            found += (await queue.list_jobs(one, limit=limit)).items
    found.sort(key=lambda j: j.finished_at or datetime.min.replace(tzinfo=UTC), reverse=True)
    return found[:limit]


def _duration(job: JobInfo) -> str | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return f"{(job.finished_at - job.started_at).total_seconds():.3f} s"


@app.command("results")
def results(
    state: ResultState = typer.Option(ResultState.all, "--state", help="Which finished jobs."),
    limit: int = typer.Option(50, "--limit", min=1, help="Show at most this many jobs."),
    as_json: bool = JsonOption,
) -> None:
    """Recently finished jobs of both queues, newest first (kept NETSYNC_JOB_RESULT_TTL_S)."""
    jobs = run(_results(state, limit))
    if as_json:
        print_json([job_out(j).model_dump(mode="json") for j in jobs])
        return
    print_table(
        "recent results",
        ["finished", "state", "job id", "function", "queue", "duration", "tries", "error"],
        ([moment(j.finished_at), j.state, j.job_id, j.function, j.queue, _duration(j), j.tries,
          j.error] for j in jobs),
    )  # fmt: skip


async def _dead(limit: int) -> list[DeadJobOut]:
    async with job_queue(ResponseSettings()) as queue:
        return [dead_out(d, queue) for d in await queue.dead_jobs(limit=limit)]


@app.command("dead")
def dead(
    limit: int = typer.Option(100, "--limit", min=1, max=10_000, help="Show at most this many."),
    as_json: bool = JsonOption,
) -> None:
    """The dead-letter list: jobs that failed for good, newest first (``netsync jobs retry``)."""
    jobs = run(_dead(limit))
    if as_json:
        print_json([j.model_dump(mode="json", by_alias=True) for j in jobs])
        return
    print_table(
        "dead letters",
        ["failed", "job id", "function", "queue", "tries", "error"],
        ([moment(j.failed_at), j.job_id, j.function, j.queue, j.tries, j.error] for j in jobs),
    )


async def _schedule() -> list[ScheduleEntryOut]:
    settings = ResponseSettings()
    async with job_queue(settings) as queue, response_session(settings) as session:
        return await schedule_entries(queue, settings, session)


@app.command("schedule")
def schedule(as_json: bool = JsonOption) -> None:
    """Every periodic entry: schedule, timezone, next and last run (as GET /api/v1/schedule)."""
    entries = run(_schedule())
    if as_json:
        print_json([e.model_dump(mode="json") for e in entries])
        return
    print_table(
        "schedule",
        ["name", "queue", "schedule", "timezone", "next run", "last run"],
        ([e.name, e.queue, e.crontab, e.timezone, moment(e.next_run) or "off",
          moment(e.last_run_at)] for e in entries),
    )  # fmt: skip
