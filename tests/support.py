"""Test helpers: databases, keys and settings, all on ephemeral resources (real processes:
``tests.processes``).

Tests never touch a system started with ``./run up``: every session gets its own two databases
(created here and dropped at the end), its own Redis database number and queue names, and every
test its own exports directory and keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
from arq.worker import Worker

from app.config import ResponseSettings
from exchange.sealing import (
    Identities,
    Recipients,
    generate_identity,
    write_identity,
    write_recipient,
)
from exchange.signing import Signer, write_key_pair
from importer.config import RequestSettings
from netsync.config import to_libpq_url, with_database
from ops.embedded import EmbeddedPostgres, EmbeddedRedis
from ops.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
#: Prefix of Redis keys tests use to flip a test job's behaviour (a job that fails until set).
FLAG = "netsync-test:flag:"


#: Sign-in limits for tests that are not about throttling (they poll a login until it works).
LENIENT_SIGN_IN = "10000/minute"

#: The Request side's sealing key pair every sandbox of this test session uses: test helpers
#: seal to it without being handed a sandbox. Tests of rotation make pairs of their own.
TEST_IDENTITY, TEST_RECIPIENT = generate_identity()
TEST_RECIPIENTS = Recipients.of([TEST_RECIPIENT])
TEST_IDENTITIES = Identities.of([TEST_IDENTITY])


@dataclass(frozen=True)
class Services:
    """The PostgreSQL and Redis the whole session uses, and its two fresh databases."""

    response_url: str
    request_url: str
    redis_url: str
    run_id: str


@dataclass(frozen=True)
class Sandbox:
    """One test's own directories, keys and queue: settings for both networks."""

    root: Path
    services: Services
    signer: Signer
    queue: str

    @property
    def recipients(self) -> Recipients:
        return TEST_RECIPIENTS

    @property
    def identities(self) -> Identities:
        return TEST_IDENTITIES

    @property
    def recipients_dir(self) -> Path:
        return self.root / "keys" / "recipients"

    @property
    def decryption_dir(self) -> Path:
        return self.root / "keys" / "decryption"

    @property
    def bulk_queue(self) -> str:
        return self.queue.removesuffix(":sync") + ":bulk"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def archive(self) -> Path:
        """The importer's archive: its own state directory, outside the exports directory."""
        return self.root / "state" / "importer" / "archive"

    @property
    def quarantine(self) -> Path:
        return self.root / "state" / "importer" / "quarantine"

    @property
    def cron_namespace(self) -> str:
        """Cron job ids are global in a Redis database: each sandbox gets its own."""
        return self.queue.split(":")[1]

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a real process of this sandbox runs with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("NETSYNC_")}
        env.update(
            {
                "NETSYNC_ENV": "test",
                "NETSYNC_STATE_DIR": str(self.root / "state"),
                "NETSYNC_EXPORTS_DIR": str(self.exports),
                "NETSYNC_RESPONSE_DATABASE_URL": self.services.response_url,
                "NETSYNC_REQUEST_DATABASE_URL": self.services.request_url,
                "NETSYNC_REDIS_URL": self.services.redis_url,
                "NETSYNC_SIGNING_KEY_FILE": str(self.root / "keys" / "signing.pem"),
                "NETSYNC_TRUSTED_KEYS_DIR": str(self.root / "keys" / "trusted"),
                "NETSYNC_EXPORT_RECIPIENTS_DIR": str(self.recipients_dir),
                "NETSYNC_DECRYPTION_KEYS_DIR": str(self.decryption_dir),
                "NETSYNC_SECRET_KEY": "test-secret-" + "x" * 40,
                "NETSYNC_SYNC_QUEUE": self.queue,
                "NETSYNC_BULK_QUEUE": self.bulk_queue,
                "NETSYNC_CRON_NAMESPACE": self.cron_namespace,
                "NETSYNC_SIGN_IN_NAMESPACE": self.cron_namespace,
                # tests poll sign-ins until a change crosses: only the sign-in tests throttle
                "NETSYNC_SIGN_IN_ACCOUNT_LIMITS": LENIENT_SIGN_IN,
                "NETSYNC_SIGN_IN_ADDRESS_LIMITS": LENIENT_SIGN_IN,
                "NETSYNC_LOG_FORMAT": "json",
                "NETSYNC_SWEEP_INTERVAL_S": "1",
                # no fixed ports: a test that wants the probes passes free_port()s
                "NETSYNC_WORKER_METRICS_PORT": "0",
                "NETSYNC_BULK_WORKER_METRICS_PORT": "0",
                "NETSYNC_IMPORTER_METRICS_PORT": "0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    def response_settings(self, **overrides: object) -> ResponseSettings:
        env = self.env()
        values: dict[str, object] = {
            "env": "test",
            "state_dir": Path(env["NETSYNC_STATE_DIR"]),
            "exports_dir": self.exports,
            "response_database_url": self.services.response_url,
            "redis_url": self.services.redis_url,
            "signing_key_file": Path(env["NETSYNC_SIGNING_KEY_FILE"]),
            "export_recipients_dir": self.recipients_dir,
            "secret_key": env["NETSYNC_SECRET_KEY"],
            "sync_queue": self.queue,
            "bulk_queue": self.bulk_queue,
            "sign_in_namespace": self.cron_namespace,
            "sign_in_account_limits": LENIENT_SIGN_IN,
            "sign_in_address_limits": LENIENT_SIGN_IN,
            "sweep_interval_s": 1,
            "log_format": "json",
            "worker_metrics_port": 0,
            "bulk_worker_metrics_port": 0,
            "gc_freeze": False,  # many apps and workers in this one process
        }
        return ResponseSettings(_env_file=None, **{**values, **overrides})  # type: ignore[arg-type]

    def request_settings(self, **overrides: object) -> RequestSettings:
        env = self.env()
        values: dict[str, object] = {
            "env": "test",
            "state_dir": Path(env["NETSYNC_STATE_DIR"]),
            "exports_dir": self.exports,
            "request_database_url": self.services.request_url,
            "trusted_keys_dir": Path(env["NETSYNC_TRUSTED_KEYS_DIR"]),
            "decryption_keys_dir": self.decryption_dir,
            "sign_in_account_limits": LENIENT_SIGN_IN,
            "sign_in_address_limits": LENIENT_SIGN_IN,
            "log_format": "json",
            "importer_metrics_port": 0,
            "gc_freeze": False,
        }
        return RequestSettings(_env_file=None, **{**values, **overrides})  # type: ignore[arg-type]


@contextlib.contextmanager
def provision_services(admin_url: str | None, redis_url: str | None) -> Iterator[Services]:
    """Two fresh, migrated databases and a Redis database number, dropped afterwards.

    ``admin_url`` / ``redis_url`` name the machine's servers; where they are ``None``, embedded
    servers start under a short temporary directory (Unix socket paths must stay short).
    """
    stoppers: list[EmbeddedPostgres | EmbeddedRedis] = []
    short = Path(tempfile.mkdtemp(prefix="nst-", dir="/tmp"))
    if not admin_url:
        pg = EmbeddedPostgres(short / "pg")
        stoppers.append(pg)
        admin_url = pg.url("postgres")
    if not redis_url:
        rd = EmbeddedRedis(short / "redis")
        stoppers.append(rd)
        redis_url = rd.url(0)
    else:  # a database number of its own, so concurrent runs on one server do not meet
        base = redis_url.split("?")[0].rstrip("/")
        if base.startswith("redis://") and base.count("/") == 3:
            base = base.rsplit("/", 1)[0]
        redis_url = f"{base}/{random.randint(1, 15)}"
    admin = to_libpq_url(admin_url)
    run_id = uuid.uuid4().hex[:10]
    names = [f"nst_{run_id}_response", f"nst_{run_id}_request"]

    async def admin_sql(*statements: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin_sql(*(f'CREATE DATABASE "{n}"' for n in names)))
    svc = Services(
        with_database(admin, names[0]), with_database(admin, names[1]), redis_url, run_id
    )
    try:
        upgrade("response", svc.response_url)
        upgrade("request", svc.request_url)
        yield svc
    finally:
        asyncio.run(admin_sql(*(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in names)))
        for server in reversed(stoppers):
            server.stop()
        shutil.rmtree(short, ignore_errors=True)


def make_sandbox(root: Path, services: Services) -> Sandbox:
    signer = Signer.generate()
    write_key_pair(signer, root / "keys" / "signing.pem", root / "keys" / "trusted")
    write_identity(root / "keys" / "decryption", TEST_IDENTITY, TEST_RECIPIENT)
    write_recipient(root / "keys" / "recipients", TEST_RECIPIENT)
    (root / "exports").mkdir(parents=True)
    return Sandbox(root, services, signer, f"netsync-test:{uuid.uuid4().hex[:12]}:sync")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def truncate_all(services: Services) -> None:
    """Empty every table of both databases (the schema stays migrated)."""
    for url in (services.response_url, services.request_url):
        conn = await asyncpg.connect(to_libpq_url(url))
        try:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'alembic_version'"
            )
            if tables:
                names = ", ".join(f'"{t["tablename"]}"' for t in tables)
                await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def running(worker: Worker, *, drain: bool = False) -> AsyncIterator[Worker]:
    """arq's real ``Worker`` running in this event loop for the block, closed after it.

    ``drain``: on leaving, stop taking jobs and let the running ones finish first (what the
    workers do on SIGTERM), so no job is left cut short for a test to count."""
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
        if drain:
            worker.allow_pick_jobs = False
            if worker.tasks:
                _, pending = await asyncio.wait(list(worker.tasks.values()), timeout=60)
                assert not pending, f"{len(pending)} jobs still running 60 s after the drain began"
    finally:
        try:
            await worker.close()
        except asyncio.CancelledError:
            # arq's close cancels the jobs still running (a sweeper tick) and gathers them
            # without return_exceptions: their cancellation, not ours, unless ours is pending
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            worker.tasks.clear()
            await worker.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def database_refusing(url: str) -> AsyncIterator[None]:
    """The database ``url`` names refuses new connections, and loses its open ones, for the block:
    what a client sees of a database server that is down or restarting."""
    libpq = to_libpq_url(url)
    name = urlsplit(libpq).path.lstrip("/")  # the query may hold a socket path: parse, never split
    conn = await asyncpg.connect(with_database(libpq, "postgres"))
    try:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        yield
    finally:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await conn.close()


async def eventually(
    check: Callable[[], object], *, timeout: float = 10.0, interval: float = 0.02
) -> object:
    """Poll an (async) check until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")
