"""``netsync import once DIR``: apply a folder of export files now, with a progress bar.

The daemon's own code path does the work (``Importer.process``: read without following links,
verify the signature, apply with the ledger row in one transaction, archive or quarantine), so a
folder carried across by hand is treated exactly like one the daemon watches, and running this
next to a live daemon is safe: the ledger applies each file once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import typer

from exchange.format import FileName, parse_file_name
from exchange.sealing import KeyFileError
from exchange.signing import Keyring
from importer.config import RequestSettings
from importer.daemon.failures import DatabaseUnavailable
from importer.daemon.handling import ScanResult
from importer.daemon.keys import load_identities
from importer.daemon.loop import Importer
from importer.db import make_sessionmaker
from netsync.config import ConfigurationError
from netsync.db import make_engine
from netsync.logging import configure_logging
from ops.cli.output import JsonOption, err, print_json, print_table, progress, run

app = typer.Typer(help="Apply export files to the Request database.", no_args_is_help=True)


def _pending(directory: Path) -> list[FileName]:
    with os.scandir(directory) as entries:
        names = [n for e in entries if (n := parse_file_name(e.name)) is not None]
    return sorted(names, key=lambda n: (n.stream, n.seq))


async def _import(directory: Path, quiet: bool) -> dict[str, Any]:
    settings = RequestSettings().model_copy(update={"exports_dir": directory})
    keyring = Keyring.from_sources(settings.trusted_keys_path, settings.trusted_keys_list)
    if not keyring.key_ids:
        err.print("[red]no trusted public keys:[/red] set NETSYNC_TRUSTED_KEYS_DIR or _KEYS")
        raise typer.Exit(2)
    try:
        identities = load_identities(settings)
    except (KeyFileError, ConfigurationError) as exc:
        err.print(f"[red]refusing to import:[/red] {exc}")
        raise typer.Exit(2) from exc
    engine = make_engine(settings.database_url, pool_size=2, application_name="netsync-cli")
    importer = Importer(settings, make_sessionmaker(engine), keyring, identities)
    result = ScanResult()
    names = _pending(directory)
    start = time.perf_counter()
    try:
        importer.prepare()
        with progress("files", quiet=quiet) as bar:
            task = bar.add_task(f"importing {directory}", total=len(names))
            for name in names:
                await importer.process(name, result)
                bar.update(task, advance=1, description=f"importing ({result.changes} changes)")
    except DatabaseUnavailable as exc:
        err.print(f"[red]the Request database is unavailable:[/red] {exc}")
        raise typer.Exit(3) from exc
    finally:
        await engine.dispose()
    seconds = time.perf_counter() - start
    return {
        "directory": str(directory),
        "files": len(names),
        "applied": result.applied,
        "duplicates": result.duplicates,
        "quarantined": result.quarantined,
        "changes": result.changes,
        "seconds": round(seconds, 3),
        "files_per_s": round(len(names) / seconds, 1) if seconds > 0 and names else 0.0,
    }


@app.command("once")
def once(
    directory: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of files."),
    as_json: bool = JsonOption,
) -> None:
    """Apply every export file in DIRECTORY once; exit 1 if any file was quarantined."""
    configure_logging("netsync-cli", level="WARNING", fmt="console")
    summary = run(_import(directory, quiet=as_json))
    if as_json:
        print_json(summary)
    else:
        columns = ("files", "applied", "duplicates", "quarantined", "changes", "files_per_s")
        print_table(
            "import",
            ["files", "applied", "already applied", "quarantined", "changes", "files/s"],
            [[summary[k] for k in columns]],
        )
    if summary["quarantined"]:
        raise typer.Exit(1)
