"""Backups as operators take them: ``pg_dump`` in its custom format, ``pg_restore --clean``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from netsync.config import to_libpq_url


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, f"{argv[0]} failed: {err.decode()[-2000:]}"


async def dump(url: str, path: Path) -> None:
    """Back the database up to ``path``."""
    await _run("pg_dump", "--format=custom", "--no-owner", f"--file={path}", to_libpq_url(url))


async def restore(url: str, path: Path) -> None:
    """Put the database back as it was at ``dump`` time: every table dropped and restored."""
    await _run(
        "pg_restore",
        "--clean",
        "--if-exists",
        "--no-owner",
        "--single-transaction",
        f"--dbname={to_libpq_url(url)}",
        str(path),
    )
