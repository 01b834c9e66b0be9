"""The importer daemon in both watch modes: every test using ``daemon`` runs with inotify events
and again with polling (NFS, Docker Desktop mounts), so neither can silently stop working."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from exchange.signing import Keyring
from importer.config import RequestSettings
from importer.daemon import Importer
from importer.db import make_sessionmaker
from netsync.db import make_engine
from tests.support import Sandbox

MakeImporter = Callable[..., Importer]


@pytest.fixture
async def make_importer(sandbox: Sandbox) -> AsyncIterator[MakeImporter]:
    """Importers on this sandbox (not running): settings overrides as keyword arguments."""
    engines = []

    def make(**overrides: object) -> Importer:
        settings: RequestSettings = sandbox.request_settings(**overrides)
        engine = make_engine(settings.database_url, pool_size=2)
        engines.append(engine)
        keyring = Keyring.from_sources(settings.trusted_keys_path)
        importer = Importer(settings, make_sessionmaker(engine), keyring)
        importer.prepare()
        return importer

    yield make
    for engine in engines:
        await engine.dispose()


@pytest.fixture(params=["events", "polling"])
async def daemon(
    request: pytest.FixtureRequest, make_importer: MakeImporter
) -> AsyncIterator[Importer]:
    """The importer's real loop, watching with events or polling; a slow rescan so that the
    watcher, not the rescan, is what finds files."""
    # polling checks every rescan_interval_s / 10 (here 0.5 s), ten times as often as the rescan
    importer = make_importer(force_polling=request.param == "polling", rescan_interval_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(importer.run(stop))
    try:
        yield importer
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
