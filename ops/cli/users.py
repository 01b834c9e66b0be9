"""``netsync users import FILE|-``: bring another deployment's users in, hashes and all.

The rows go through ``app.users.bulk``, the same code as ``POST /api/v1/users/import``: existing
bcrypt and argon2 hashes are kept as they are (rehashed at the next sign-in), plain passwords
hashed, every username upserted (a re-run updates, never duplicates), a bad row reported with its
line number while the others go on (``--atomic``: nothing kept if one is bad). Each batch commits
on its own, so an interrupted import is finished by running it again. The command talks to the
Response database directly (as a migration tool runs next to it), then asks a worker to export
at once; the sweeper would within seconds anyway.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import typer
from rich.markup import escape
from sqlalchemy.exc import DBAPIError

from app.config import ResponseSettings
from app.db import make_sessionmaker, session_scope
from app.queue.client import JobQueue, redis_pool
from app.users.bulk import Format, ImportRefused, ImportSummary, import_users
from netsync.db import make_engine
from netsync.errors import database_unavailable
from netsync.logging import configure_logging
from ops.cli.output import JsonOption, err, print_json, print_table, progress, run

app = typer.Typer(help="Users: bring them in from another deployment.", no_args_is_help=True)

CHUNK = 256 * 1024


async def _chunks(stream: IO[bytes], advance: Any) -> AsyncIterator[bytes]:
    while True:
        chunk = await asyncio.to_thread(stream.read, CHUNK)
        if not chunk:
            return
        advance(len(chunk))
        yield chunk


def _open(source: str) -> tuple[IO[bytes], int | None]:
    if source == "-":
        return sys.stdin.buffer, None
    path = Path(source)
    return path.open("rb"), path.stat().st_size


async def _import(
    source: str, fmt: Format, atomic: bool, update: bool, quiet: bool
) -> dict[str, Any]:
    settings = ResponseSettings()
    engine = make_engine(settings.database_url, pool_size=2, application_name="netsync-cli")
    maker = make_sessionmaker(engine)
    stream, total = await asyncio.to_thread(_open, source)
    try:
        with progress("B", quiet=quiet) as bar:
            task = bar.add_task(f"importing {source}", total=total)

            def shown(summary: ImportSummary) -> None:
                bar.update(
                    task,
                    description=f"importing: {summary.created} new, {summary.updated} updated,"
                    f" {summary.failed} bad",
                )

            summary = await import_users(
                lambda: session_scope(maker),
                _chunks(stream, lambda n: bar.update(task, advance=n)),
                fmt,
                atomic=atomic,
                update=update,
                progress=shown,
            )
    except ImportRefused as exc:
        err.print("[red]refused:[/red] " + escape(str(exc.detail)))
        raise typer.Exit(2) from exc
    except (DBAPIError, OSError) as exc:
        if not database_unavailable(exc):
            raise
        err.print("[red]the Response database is unavailable[/red]; run the import again later")
        raise typer.Exit(3) from exc
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
        await engine.dispose()
    queue = JobQueue(
        redis_pool(settings.redis_dsn, queue_name=settings.sync_queue),
        sync_queue=settings.sync_queue,
    )
    try:
        exported = await queue.enqueue_sweep() is not None
    finally:
        await queue.close()
    return {**summary.as_dict(), "export_started": exported}


@app.command("import")
def import_(
    source: str = typer.Argument(..., help="An NDJSON or CSV file, or - for standard input."),
    fmt: str = typer.Option("", "--format", help="ndjson or csv (default: from the extension)."),
    atomic: bool = typer.Option(False, "--atomic", help="Keep nothing if a row is bad."),
    update: bool = typer.Option(
        False, "--update", help="Also change users that exist (default: leave them as they are)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Import users; exit 1 if a row was refused (the others are imported)."""
    configure_logging("netsync-cli", level="WARNING", fmt="console")
    chosen = fmt or ("csv" if source.lower().endswith(".csv") else "ndjson")
    if chosen not in ("ndjson", "csv"):
        err.print(f"[red]unknown format {chosen!r}[/red]: ndjson or csv")
        raise typer.Exit(2)
    if source != "-" and not Path(source).is_file():
        err.print(f"[red]no such file:[/red] {source}")
        raise typer.Exit(2)
    summary = run(_import(source, chosen, atomic, update, quiet=as_json))  # type: ignore[arg-type]
    if as_json:
        print_json(summary)
    else:
        print_table(
            "users import",
            ["lines", "created", "updated", "unchanged", "refused"],
            [[summary[k] for k in ("lines", "created", "updated", "unchanged", "failed")]],
        )
        for error in summary["errors"]:
            err.print(f"line {error['line']}: {error['error']}", markup=False, highlight=False)
    if summary["failed"]:
        raise typer.Exit(1)
