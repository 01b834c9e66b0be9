"""``netsync users|settings|profile-types import FILE|-``: another deployment's rows, brought in.

The rows go through ``app.imports``, the same code as ``POST /api/v1/<kind>/import``: users keep
their bcrypt and argon2 hashes as they are (rehashed at the next sign-in) and plain passwords
are hashed; rows are matched by username, key or name (a re-run updates with ``--update``, never
duplicates); a bad row is reported with its line number while the others go on (``--atomic``:
nothing kept if one is bad). Each batch commits on its own, so an interrupted import is finished
by running it again. The command talks to the Response database directly (as a migration tool
runs next to it), then asks a worker to export at once; the sweeper would within seconds anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import asyncpg
import typer
from rich.markup import escape
from rich.progress import TaskID
from sqlalchemy.exc import DBAPIError

from app.config import ResponseSettings
from app.db import make_sessionmaker, session_scope
from app.imports.rows import Format
from app.imports.run import (
    Bulk,
    Chunks,
    ImportRefused,
    ImportSummary,
    Sessions,
    import_stream,
    run_import,
    spooled,
)
from app.profile_types.bulk import PROFILE_TYPES
from app.queue.client import JobQueue, redis_pool
from app.settings.bulk import SETTINGS
from app.users.bulk import users_bulk
from netsync.config import to_libpq_url
from netsync.db import make_engine
from netsync.errors import ServiceUnavailable, database_unavailable
from netsync.logging import configure_logging
from ops import legacy
from ops.cli.output import JsonOption, err, print_json, print_table, progress, run

CHUNK = 256 * 1024
#: What a summary's table shows, in its columns' order.
COLUMNS = ("lines", "created", "updated", "unchanged", "failed")


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


async def export_now(settings: ResponseSettings) -> bool:
    """Ask a worker to export the written rows now; False when Redis cannot take the job."""
    queue = JobQueue(
        redis_pool(settings.redis_dsn, queue_name=settings.sync_queue),
        sync_queue=settings.sync_queue,
    )
    try:
        return await queue.enqueue_sweep() is not None
    finally:
        await queue.close()


async def against_response(settings: ResponseSettings, work: Callable[[Sessions], Any]) -> Any:
    """``work(sessions)`` against the Response database, with the command's answers to what goes
    wrong: an atomic import refused (exit 2), the database unavailable (exit 3)."""
    engine = make_engine(settings.database_url, pool_size=2, application_name="netsync-cli")
    maker = make_sessionmaker(engine)
    try:
        return await work(lambda: session_scope(maker))
    except ImportRefused as exc:
        err.print("[red]refused:[/red] " + escape(str(exc.detail)))
        raise typer.Exit(2) from exc
    except ServiceUnavailable as exc:  # no room to hold standard input; the hashing pool busy
        err.print("[red]unavailable:[/red] " + escape(str(exc.detail)) + "; run the import again")
        raise typer.Exit(3) from exc
    except (DBAPIError, OSError) as exc:
        if not database_unavailable(exc):
            raise
        err.print("[red]the Response database is unavailable[/red]; run the import again later")
        raise typer.Exit(3) from exc
    finally:
        await engine.dispose()


async def _import(
    bulk: Bulk[Any], source: str, fmt: Format, atomic: bool, update: bool, quiet: bool
) -> dict[str, Any]:
    settings = ResponseSettings()
    stream, total = await asyncio.to_thread(_open, source)
    start = stream.tell() if stream.seekable() else 0  # standard input may be part read
    if total is not None:
        total -= start

    async def work(sessions: Sessions) -> ImportSummary:
        with progress("B", quiet=quiet) as bar:
            task = bar.add_task(f"importing {source}", total=total)

            def shown(summary: ImportSummary) -> None:
                bar.update(
                    task,
                    description=f"importing: {summary.created} new, {summary.updated} updated,"
                    f" {summary.failed} bad",
                )

            def advance(n: int) -> None:
                bar.update(task, advance=n)

            twice = bulk.reads_twice(atomic)  # checked (and hashed), then written
            labels = iter(["checking and hashing"] if twice else [])

            def reading() -> AsyncIterator[bytes]:
                """The input from where it started (an atomic import may read it twice)."""
                stream.seek(start)
                bar.reset(task, total=total, description=f"{next(labels, 'importing')} {source}")
                return _chunks(stream, advance)

            async with contextlib.AsyncExitStack() as held:
                chunks: Chunks = reading
                if not stream.seekable():  # a pipe: held in a temporary file if read twice
                    chunks = (
                        await held.enter_async_context(spooled(_chunks(stream, advance)))
                        if twice
                        else lambda: _chunks(stream, advance)
                    )
                return await import_stream(
                    bulk, sessions, chunks, fmt, atomic=atomic, update=update, progress=shown
                )

    try:
        summary: ImportSummary = await against_response(settings, work)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return {**summary.as_dict(), "export_started": await export_now(settings)}


def show(title: str, summary: dict[str, Any], as_json: bool) -> None:
    """A summary as a table and its refused rows (or JSON); exit 1 if a row was refused."""
    if as_json:
        print_json(summary)
    else:
        print_table(
            title,
            ["lines", "created", "updated", "unchanged", "refused"],
            [[summary[k] for k in COLUMNS]],
        )
        for error in summary["errors"]:
            err.print(f"line {error['line']}: {error['error']}", markup=False, highlight=False)
    if summary["failed"]:
        raise typer.Exit(1)


SourceArgument = typer.Argument(..., help="An NDJSON or CSV file, or - for standard input.")
FormatOption = typer.Option("", "--format", help="ndjson or csv (default: from the name).")
AtomicOption = typer.Option(False, "--atomic", help="Keep nothing if a row is bad.")
UpdateOption = typer.Option(
    False, "--update", help="Also change rows that exist (default: leave them alone)."
)
ReplaceHashesOption = typer.Option(
    False,
    "--replace-hashes",
    help="With --update, put the rows' password hashes over the stored ones too (default: a"
    " stored hash stays: its owner may have changed the password since).",
)


def import_file(
    noun: str, bulk: Bulk[Any], source: str, fmt: str, atomic: bool, update: bool, as_json: bool
) -> None:
    """The ``import`` command of every group: check the arguments, import, show the summary."""
    configure_logging("netsync-cli", level="WARNING", fmt="console")
    chosen = fmt or ("csv" if source.lower().endswith(".csv") else "ndjson")
    if chosen not in ("ndjson", "csv"):
        err.print(f"[red]unknown format {chosen!r}[/red]: ndjson or csv")
        raise typer.Exit(2)
    if source != "-" and not Path(source).is_file():
        err.print(f"[red]no such file:[/red] {source}")
        raise typer.Exit(2)
    summary = run(_import(bulk, source, chosen, atomic, update, quiet=as_json))  # type: ignore[arg-type]
    show(f"{noun} import", summary, as_json)


def import_group(noun: str, bulk: Bulk[Any], help: str) -> typer.Typer:
    """A command group with its ``import`` command for one kind of row."""
    group = typer.Typer(help=help, no_args_is_help=True)

    @group.command("import")
    def import_(
        source: str = SourceArgument,
        fmt: str = FormatOption,
        atomic: bool = AtomicOption,
        update: bool = UpdateOption,
        as_json: bool = JsonOption,
    ) -> None:
        import_file(noun, bulk, source, fmt, atomic, update, as_json)

    import_.__doc__ = f"Import {noun}; exit 1 if a row was refused (the others are imported)."
    return group


users = typer.Typer(help="Users: bring them in from another deployment.", no_args_is_help=True)


@users.command("import")
def import_users(
    source: str = SourceArgument,
    fmt: str = FormatOption,
    atomic: bool = AtomicOption,
    update: bool = UpdateOption,
    replace_hashes: bool = ReplaceHashesOption,
    as_json: bool = JsonOption,
) -> None:
    """Import users; exit 1 if a row was refused (the others are imported)."""
    bulk = users_bulk(replace_hashes=replace_hashes)
    import_file("users", bulk, source, fmt, atomic, update, as_json)


settings = import_group("settings", SETTINGS, "Settings: bring them in from another deployment.")
profile_types = import_group(
    "profile types", PROFILE_TYPES, "Profile types: bring them in from another deployment."
)


async def _migrate(
    url: str, schema: str, update: bool, replace_hashes: bool, quiet: bool
) -> dict[str, Any]:
    settings = ResponseSettings()
    bulks: tuple[Bulk[Any], ...] = (
        PROFILE_TYPES,
        SETTINGS,
        users_bulk(replace_hashes=replace_hashes),
    )
    try:
        legacy_db = await asyncpg.connect(to_libpq_url(url), timeout=10)
    except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # the exception's type alone: its text may quote the URL, password and all
        err.print(f"[red]cannot reach the old database:[/red] {escape(type(exc).__name__)}")
        raise typer.Exit(3) from exc
    try:
        async with legacy_db.transaction(isolation="repeatable_read", readonly=True):
            try:  # every query tried before anything is written
                readings = [await legacy.check(legacy_db, kind, schema) for kind in legacy.KINDS]
            except legacy.LegacySchemaError as exc:
                err.print(f"[red]refusing to migrate:[/red] {escape(str(exc))}")
                raise typer.Exit(2) from exc

            async def work(sessions: Sessions) -> dict[str, Any]:
                done: dict[str, Any] = {}
                with progress("rows", quiet=quiet) as bar:
                    for reading, bulk in zip(readings, bulks, strict=True):
                        kind = reading.kind
                        task = bar.add_task(f"importing {kind.table}", total=None)

                        def shown(summary: ImportSummary, task: TaskID = task) -> None:
                            bar.update(task, completed=summary.lines)

                        summary = await run_import(
                            bulk,
                            sessions,
                            functools.partial(legacy.rows, legacy_db, reading),
                            update=update,
                            progress=shown,
                        )
                        done[kind.table] = {**summary.as_dict(), "order": kind.order}
                return done

            done: dict[str, Any] = await against_response(settings, work)
    finally:
        await legacy_db.close()
    return {"tables": done, "export_started": await export_now(settings)}


def migrate_from_celery(
    database_url: str = typer.Option(
        ...,
        "--database-url",
        envvar="NETSYNC_CELERY_DATABASE_URL",
        help="The old deployment's PostgreSQL (better from NETSYNC_CELERY_DATABASE_URL: a"
        " password on the command line is visible to every user of the machine).",
        show_default=False,
    ),
    schema: str = typer.Option("public", "--schema", help="The schema its tables are in."),
    update: bool = UpdateOption,
    replace_hashes: bool = ReplaceHashesOption,
    as_json: bool = JsonOption,
) -> None:
    """Import the previous (Celery) deployment's profile types, settings and users, read from
    its database; users keep their hashes. Exit 1 if a row was refused (the others are
    imported); a re-run imports what is missing and changes nothing else."""
    configure_logging("netsync-cli", level="WARNING", fmt="console")
    result = run(_migrate(database_url, schema, update, replace_hashes, quiet=as_json))
    tables = result["tables"]
    if as_json:
        print_json(result)
    else:
        print_table(
            "migration from the Celery deployment",
            ["table", "rows", "created", "updated", "unchanged", "refused"],
            [[name, *(t[k] for k in COLUMNS)] for name, t in tables.items()],
        )
        for name, t in tables.items():
            for error in t["errors"]:
                err.print(
                    f"{name} row {error['line']} (by {t['order']}): {error['error']}",
                    markup=False,
                    highlight=False,
                )
    if any(t["failed"] for t in tables.values()):
        raise typer.Exit(1)
