"""``netsync export run NAME``: run an export now instead of waiting for its schedule;
``netsync export resend changes --from-seq A --to-seq B``: publish lost files again.

``changes`` runs the outbox sweeper on the sync queue at once (whatever is pending leaves now);
``snapshots`` enqueues a snapshot of every entity type (what a new Request site needs); any other
name enqueues ``export_<name>`` on the bulk queue, where the bulk worker runs snapshot exports.
The job goes through ``app.queue.client.JobQueue`` like every other enqueue, so it wakes a worker at
once and shows up in the job metrics.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import typer

from app.config import ResponseSettings
from app.db import make_sessionmaker
from app.queue.client import SWEEP_JOB, JobInfo, JobQueue, export_job, redis_pool
from exchange.format import CHANGES_STREAM, SNAPSHOT_STREAMS
from jobs.relay import OutboxRelay
from jobs.worker import export_keys
from netsync.db import make_engine
from ops.cli.output import JsonOption, err, out, print_json, run

app = typer.Typer(help="Run exports now.", no_args_is_help=True)

_NAME = re.compile(r"^[a-z][a-z_]{0,31}$")


def target(name: str, settings: ResponseSettings) -> tuple[str, str]:
    """The function and queue that run export ``name``."""
    if name == "changes":
        return SWEEP_JOB, settings.sync_queue
    return export_job(name), settings.bulk_queue


async def _run(name: str, queue: str | None, wait_s: float) -> dict[str, Any]:
    settings = ResponseSettings()
    function, default_queue = target(name, settings)
    queue_name = queue or default_queue
    job_id = f"export:{name}:{uuid.uuid4().hex[:12]}"
    jobs = JobQueue(redis_pool(settings.redis_dsn, queue_name=queue_name), sync_queue=queue_name)
    try:
        if not await jobs.enqueue(function, job_id=job_id, queue=queue_name):
            err.print("[red]Redis did not take the job[/red]; is it reachable?")
            raise typer.Exit(3)
        info = JobInfo(job_id, "queued", function=function)
        deadline = time.monotonic() + wait_s
        while wait_s and info.state in ("queued", "in_progress") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            info = await jobs.info(job_id)
    finally:
        await jobs.close()
    return {
        "job_id": job_id,
        "function": function,
        "queue": queue_name,
        "state": info.state,
        "result": info.result,
        "error": info.error,
    }


#: ``netsync export run snapshots``: every entity type's snapshot, as a new Request site needs.
SNAPSHOTS = tuple(stream.removeprefix("snapshot_") for stream in SNAPSHOT_STREAMS.values())


@app.command("run")
def run_export(
    name: str = typer.Argument(
        ..., help="changes, snapshots (every entity type), or one snapshot export (users…)"
    ),
    queue: str | None = typer.Option(None, "--queue", help="Override the queue."),
    wait: float = typer.Option(0, "--wait", min=0, help="Wait up to this many seconds for it."),
    as_json: bool = JsonOption,
) -> None:
    """Enqueue an export now and print its job id."""
    if not _NAME.fullmatch(name):
        err.print(f"[red]not an export name:[/red] {name!r}")
        raise typer.Exit(2)
    names = SNAPSHOTS if name == "snapshots" else (name,)
    jobs = [run(_run(each, queue, wait)) for each in names]
    if as_json:
        print_json(jobs[0] if len(jobs) == 1 else jobs)
    else:
        for job in jobs:
            out.print(job["job_id"])
            err.print(f"{job['function']} on {job['queue']}: {job['state']}")
    if any(job["state"] == "failed" for job in jobs):
        raise typer.Exit(1)


@app.command("resend")
def resend(
    stream: str = typer.Argument(..., help="The stream: changes."),
    from_seq: int = typer.Option(..., "--from-seq", min=1, help="First file number."),
    to_seq: int = typer.Option(..., "--to-seq", min=1, help="Last file number."),
    as_json: bool = JsonOption,
) -> None:
    """Publish files again from what the Response database keeps (files the carrier lost):
    the same file ids and records, sealed and signed anew. Run it where a worker runs: it signs
    with the worker's key. The importer applies what it lacks and takes the rest as duplicates."""
    if stream != CHANGES_STREAM:
        err.print("[red]only the changes stream is resent[/red]; snapshots: netsync export run")
        raise typer.Exit(2)
    if to_seq < from_seq or to_seq - from_seq >= MAX_RESEND:
        err.print(f"[red]give a range of 1 to {MAX_RESEND} files[/red] (--from-seq ≤ --to-seq)")
        raise typer.Exit(2)
    done = run(_resend(from_seq, to_seq))
    if as_json:
        print_json(done)
    else:
        for name in done["files"]:
            out.print(name)
        err.print(f"{len(done['files'])} file(s) published again")
        if done["unknown"]:
            err.print(f"[yellow]not allocated, or past the retention:[/yellow] {done['unknown']}")
        if done["incomplete"]:
            err.print(
                "[red]not resent, their outbox rows are no longer all kept:[/red] "
                f"{done['incomplete']} (a snapshot export carries the state instead)"
            )
    if done["incomplete"]:
        raise typer.Exit(1)


#: One command resends at most this many files (a wider loss calls for a snapshot).
MAX_RESEND = 100_000


async def _resend(first: int, last: int) -> dict[str, Any]:
    settings = ResponseSettings()
    signer, recipients = export_keys(settings)
    engine = make_engine(settings.database_url, pool_size=1, application_name="netsync-cli")
    try:
        relay = OutboxRelay(
            make_sessionmaker(engine), settings.exports_path, signer, recipients=recipients
        )
        done = await relay.resend(first, last)
    finally:
        await engine.dispose()
    return {
        "files": [f.name for f in done.files],
        "unknown": done.unknown,
        "incomplete": done.incomplete,
    }
