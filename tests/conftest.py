"""Fixtures: real PostgreSQL and Redis (the machine's when the environment names them, embedded
ones otherwise), two freshly migrated databases per session, a sandbox per test."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from arq.worker import Worker, create_worker
from asgi_lifespan import LifespanManager

from app.main import create_app
from exchange.signing import Keyring
from importer.daemon import Importer
from importer.db import make_sessionmaker as request_sessionmaker
from jobs.worker import worker_settings
from netsync.db import make_engine
from netsync.migrate import upgrade
from tests.support import Sandbox, Services, make_sandbox, truncate_all


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    stoppers: list[object] = []
    admin_url = os.environ.get("NETSYNC_TEST_DATABASE_URL")
    redis_url = os.environ.get("NETSYNC_TEST_REDIS_URL")
    # Unix socket paths must stay short: embedded servers live under a short temp dir.
    short = Path(tempfile.mkdtemp(prefix="nst-", dir="/tmp"))
    if not admin_url:
        from netsync.embedded import EmbeddedPostgres

        pg = EmbeddedPostgres(short / "pg")
        stoppers.append(pg)
        admin_url = pg.url("postgres")
    if not redis_url:
        from netsync.embedded import EmbeddedRedis

        rd = EmbeddedRedis(short / "redis")
        stoppers.append(rd)
        redis_url = rd.url(0)
    else:  # a database number of its own, so concurrent runs on one server do not meet
        base = redis_url.split("?")[0].rstrip("/")
        if base.startswith("redis://") and base.count("/") == 3:
            base = base.rsplit("/", 1)[0]
        redis_url = f"{base}/{random.randint(1, 15)}"

    run_id = uuid.uuid4().hex[:10]
    names = {"response": f"nst_{run_id}_response", "request": f"nst_{run_id}_request"}

    async def create() -> None:
        conn = await asyncpg.connect(_plain(admin_url))
        try:
            for name in names.values():
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(_plain(admin_url))
        try:
            for name in names.values():
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())

    def db_url(name: str) -> str:
        base, _, query = _plain(admin_url).partition("?")
        base = base.rsplit("/", 1)[0] + "/" + name
        return base + ("?" + query if query else "")

    svc = Services(db_url(names["response"]), db_url(names["request"]), redis_url, run_id)
    upgrade("response", svc.response_url)
    upgrade("request", svc.request_url)
    try:
        yield svc
    finally:
        asyncio.run(drop())
        for server in reversed(stoppers):
            server.stop()  # type: ignore[attr-defined]
        shutil.rmtree(short, ignore_errors=True)


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
    task = asyncio.create_task(w.async_run())
    try:
        yield w
    finally:
        await w.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def importer(sandbox: Sandbox) -> AsyncIterator[Importer]:
    """The importer daemon's real loop in-process (``tests/test_processes.py`` runs it as a
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
