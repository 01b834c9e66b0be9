"""The importer daemon in both watch modes: every test using ``daemon`` runs with inotify events
and again with polling (NFS, Docker Desktop mounts), so neither can silently stop working."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from importer.daemon.loop import Importer
from tests.conftest import MakeImporter

__all__ = ["MakeImporter"]


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
