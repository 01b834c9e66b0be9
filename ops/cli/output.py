"""How the CLI speaks: Rich tables and progress bars for people, JSON for scripts.

Every command that prints data takes ``--json``; the JSON goes to stdout alone, so it can be
piped, while progress bars and notes go to stderr.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from netsync.config import ConfigurationError

T = TypeVar("T")

out = Console()
err = Console(stderr=True)

JsonOption = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine; a configuration problem is a clear message and exit 2."""
    try:
        return asyncio.run(coroutine)
    except ConfigurationError as exc:
        err.print(f"[red]configuration:[/red] {exc}")
        raise typer.Exit(2) from exc


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
    sys.stdout.flush()


def moment(value: datetime | None) -> str | None:
    """A time as a table shows it: to the second, with its UTC offset."""
    return value.isoformat(timespec="seconds") if value is not None else None


def print_table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str = "none"
) -> None:
    rows = list(rows)
    if not rows:
        out.print(f"{title}: {empty}")
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    out.print(table)


class RateColumn(ProgressColumn):
    """Items per second, in the unit the bar counts."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


def progress(unit: str, *, quiet: bool = False) -> Progress:
    """A progress bar with counts, rate and elapsed time, on stderr (hidden when ``quiet``)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )
