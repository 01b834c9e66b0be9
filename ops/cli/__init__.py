"""The ``netsync`` command: operators' view of and control over a running system.

Each group lives in its own module; every command reads the same ``NETSYNC_*`` configuration as
the processes, prints a Rich table for people and JSON with ``--json`` for scripts.
"""

from __future__ import annotations

import typer

from ops.cli import bulk, export, importing, inspect, jobs, keys, streams
from ops.cli.verify import verify

app = typer.Typer(
    name="netsync",
    help=(
        "Operate netsync: inspect queues, jobs and configuration, retry dead jobs, purge a "
        "queue, run exports, import, verify, keys."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(inspect.app, name="inspect")
app.add_typer(export.app, name="export")
app.add_typer(importing.app, name="import")
app.add_typer(keys.app, name="keys")
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(jobs.queue_app, name="queue")
app.add_typer(bulk.users, name="users")
app.add_typer(bulk.settings, name="settings")
app.add_typer(bulk.profile_types, name="profile-types")
app.add_typer(streams.app, name="streams")
app.command("verify")(verify)
app.command("migrate-from-celery")(bulk.migrate_from_celery)


def main() -> None:
    app()
