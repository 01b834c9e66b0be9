"""``netsync jobs retry|discard ID`` and ``netsync queue purge NAME --yes``: acting on jobs.

The same operations as ``POST /api/v1/jobs/dead/{id}/retry``, ``DELETE /api/v1/jobs/dead/{id}``
and ``DELETE /api/v1/queues/{name}``, through the same ``app.queue.client.JobQueue`` methods. Exit
codes: 0 done, 1 no such job or queue, 2 refused (purging without ``--yes``), 3 Redis is down.
"""

from __future__ import annotations

import typer

from app.config import ResponseSettings
from app.operations.service import dead_out
from ops.cli.connect import job_queue
from ops.cli.output import JsonOption, err, out, print_json, run

jobs_app = typer.Typer(help="Retry or discard dead jobs.", no_args_is_help=True)
queue_app = typer.Typer(help="Act on a whole queue.", no_args_is_help=True)

NOT_FOUND = 1
REFUSED = 2


async def _retry(job_id: str) -> str | None:
    async with job_queue(ResponseSettings()) as queue:
        return await queue.retry_dead(job_id)


@jobs_app.command("retry")
def retry(
    job_id: str = typer.Argument(..., help="A dead job's id (netsync inspect dead)."),
    as_json: bool = JsonOption,
) -> None:
    """Run a dead job again (same function, arguments and queue) and print its new id."""
    new_id = run(_retry(job_id))
    if new_id is None:
        err.print(f"[red]no dead job[/red] {job_id!r}")
        raise typer.Exit(NOT_FOUND)
    if as_json:
        print_json({"retried": job_id, "job_id": new_id})
    else:
        out.print(new_id, soft_wrap=True)


async def _discard(job_id: str) -> dict[str, object] | None:
    async with job_queue(ResponseSettings()) as queue:
        dead = await queue.discard_dead(job_id)
        return (
            None if dead is None else dead_out(dead, queue).model_dump(mode="json", by_alias=True)
        )


@jobs_app.command("discard")
def discard(
    job_id: str = typer.Argument(..., help="A dead job's id (netsync inspect dead)."),
    as_json: bool = JsonOption,
) -> None:
    """Forget a dead job for good."""
    dead = run(_discard(job_id))
    if dead is None:
        err.print(f"[red]no dead job[/red] {job_id!r}")
        raise typer.Exit(NOT_FOUND)
    if as_json:
        print_json(dead)
    else:
        out.print(f"discarded {job_id} ({dead['function']})", soft_wrap=True)


async def _purge(name: str, yes: bool) -> tuple[str, int] | None:
    async with job_queue(ResponseSettings()) as queue:
        key = queue.queue_key(name)
        if key is None:
            err.print(f"[red]no queue[/red] {name!r}; there are: {', '.join(queue.queues)}")
            raise typer.Exit(NOT_FOUND)
        if not yes:
            return None
        return queue.queue_label(key) or name, await queue.purge(key)


@queue_app.command("purge")
def purge(
    name: str = typer.Argument(..., help="sync, bulk, or the queue's Redis key."),
    yes: bool = typer.Option(False, "--yes", help="Really drop every queued job."),
    as_json: bool = JsonOption,
) -> None:
    """Drop every queued job of one queue (running ones finish); cannot be undone."""
    purged = run(_purge(name, yes))
    if purged is None:
        err.print(f"purging drops every queued job of {name!r} for good; add --yes to do it")
        raise typer.Exit(REFUSED)
    label, removed = purged
    if as_json:
        print_json({"name": label, "removed": removed})
    else:
        out.print(f"purged {label}: {removed} jobs removed")
