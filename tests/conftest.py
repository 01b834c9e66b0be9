"""Fixtures: real PostgreSQL and Redis (the machine's when the environment names them, embedded
ones otherwise), two freshly migrated databases per session, a sandbox per test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from arq.worker import Worker, create_worker
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.queue.client import JobQueue, redis_pool
from exchange.signing import Keyring
from importer.config import RequestSettings
from importer.daemon.loop import Importer
from importer.db import make_sessionmaker as request_sessionmaker
from jobs.worker import worker_settings
from netsync import passwords
from netsync.db import make_engine
from tests.processes import Process
from tests.support import (
    FLAG,
    Sandbox,
    Services,
    make_sandbox,
    provision_services,
    running,
    truncate_all,
)

MakeImporter = Callable[..., Importer]


@pytest.fixture
def no_refusal_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused sign-ins answer as soon as their check is done. For the throttling tests, whose
    windows last two seconds: a refusal floor of ~0.4 s would let their attempts straddle a
    window's end. The floor itself is tested on its own (tests/app/test_sign_in.py)."""
    monkeypatch.setattr(passwords, "_floor_s", 0.0)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    with provision_services(
        os.environ.get("NETSYNC_TEST_DATABASE_URL"), os.environ.get("NETSYNC_TEST_REDIS_URL")
    ) as svc:
        yield svc


@pytest.fixture
async def sandbox(services: Services, tmp_path: Path) -> Sandbox:
    await truncate_all(services)
    return make_sandbox(tmp_path, services)


@pytest.fixture
async def api(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    """The Response API in-process, with its real lifespan, database and Redis."""
    app = create_app(sandbox.response_settings())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://response") as client:
            yield client


@pytest.fixture
async def worker(sandbox: Sandbox) -> AsyncIterator[Worker]:
    """arq's real Worker on this test's queue, running until the test ends."""
    w = create_worker(worker_settings(sandbox.response_settings()), handle_signals=False)
    async with running(w):
        yield w


@pytest.fixture
async def make_importer(sandbox: Sandbox) -> AsyncIterator[MakeImporter]:
    """Importers on this sandbox (not running): settings overrides as keyword arguments."""
    engines = []
    importers: list[Importer] = []

    def make(**overrides: object) -> Importer:
        settings: RequestSettings = sandbox.request_settings(**overrides)
        engine = make_engine(settings.database_url, pool_size=2)
        engines.append(engine)
        keyring = Keyring.from_sources(settings.trusted_keys_path)
        importer = Importer(settings, request_sessionmaker(engine), keyring)
        importer.prepare()
        importers.append(importer)
        return importer

    yield make
    for made in importers:
        made.reader.close()  # its unsealing child
    for engine in engines:
        await engine.dispose()


@pytest.fixture
async def importer(sandbox: Sandbox) -> AsyncIterator[Importer]:
    """The importer daemon's real loop in-process (``tests/system/test_processes.py`` runs it as a
    separate process)."""
    settings = sandbox.request_settings()
    engine = make_engine(settings.database_url, pool_size=2)
    daemon = Importer(
        settings,
        request_sessionmaker(engine),
        Keyring.from_sources(settings.trusted_keys_path),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        yield daemon
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await engine.dispose()


@pytest.fixture
async def queue(sandbox: Sandbox) -> AsyncIterator[JobQueue]:
    """Our own client of the sandbox's queues, as the API and the worker hold one."""
    q = JobQueue(
        redis_pool(sandbox.services.redis_url, queue_name=sandbox.queue),
        sync_queue=sandbox.queue,
        bulk_queue=sandbox.bulk_queue,
    )
    try:
        yield q
    finally:
        await q.redis.delete(FLAG + sandbox.queue)
        await q.close()


@pytest.fixture
def procs() -> Iterator[list[Process]]:
    """Real processes a test starts; stopped (SIGTERM, then SIGKILL) when it ends."""
    started: list[Process] = []
    yield started
    for proc in reversed(started):
        proc.stop()
