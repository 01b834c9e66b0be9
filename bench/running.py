"""What a benchmark against a running system (``./run up`` in another terminal) needs to find it:
the Request database's URL and the administrator's password, from the environment or from the
files ``./run up`` writes (``.netsync/embedded.env``, ``.netsync/admin-password``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import asyncpg


def embedded(name: str) -> str | None:
    path = Path(".netsync/embedded.env")
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == name:
                return value
    return None


def add_request_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--request-db",
        default=os.environ.get("NETSYNC_REQUEST_DATABASE_URL")
        or embedded("NETSYNC_REQUEST_DATABASE_URL"),
    )


def admin_password(parser: argparse.ArgumentParser, request_db: str | None) -> str:
    """The administrator's password; the parser's error (and exit) when either is unknown."""
    password = os.environ.get("NETSYNC_ADMIN_PASSWORD")
    if not password and Path(".netsync/admin-password").exists():
        password = Path(".netsync/admin-password").read_text().strip()
    if not request_db or not password:
        parser.error("set NETSYNC_REQUEST_DATABASE_URL and NETSYNC_ADMIN_PASSWORD (or ./run up)")
    return password


async def users_arrived(conn: asyncpg.Connection, prefix: str, n: int, started: float) -> int:
    """Wait (up to 600 s after ``started``) until the Request database holds ``n`` users whose
    names start with ``prefix``; how many it holds then."""
    count = 0
    while count < n and time.perf_counter() - started < 600:
        count = await conn.fetchval(
            "SELECT count(*) FROM synced_users WHERE username LIKE $1", prefix + "%"
        )
        if count < n:
            await asyncio.sleep(0.05)
    return int(count)
