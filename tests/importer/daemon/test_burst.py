"""Bursts: thousands of files at once are applied in batches, by the rescan alone when no file
event arrives, and two importers racing over one directory never apply a file twice."""

from __future__ import annotations

import asyncio
import os

from importer.daemon.loop import Importer
from tests.importer.conftest import MakeImporter
from tests.importer.files import (
    count,
    drop_burst,
    expected_versions,
    export_names,
    latest_versions,
    query,
)
from tests.support import Sandbox, eventually


async def run(importer: Importer) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(importer.run(stop))


async def test_ten_thousand_files_apply_in_batches_with_the_watcher_off(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    files = 10_000
    importer = make_importer(watch_files=False, rescan_interval_s=0.2)
    stop, task = await run(importer)
    try:
        # the daemon is up and has looked once: only a rescan can find the burst
        await eventually(lambda: importer.passes >= 1, timeout=10, interval=0.02)
        drop_burst(sandbox, files)

        async def all_applied() -> bool:
            return await count(sandbox, "import_ledger") == files

        await eventually(all_applied, timeout=90, interval=0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert await latest_versions(sandbox) == expected_versions(files)
    assert await count(sandbox, "sync_gaps") == 0
    assert export_names(sandbox.exports) == []
    assert len(os.listdir(importer.archive_dir)) == files
    # many files per transaction: far fewer distinct commit times than files
    rows = await query(sandbox, "SELECT count(DISTINCT applied_at) AS n FROM import_ledger")
    assert rows[0]["n"] <= files // 50


async def test_two_importers_racing_over_a_burst_apply_each_file_once(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    files = 2_000
    first = make_importer(batch_max_files=50, rescan_interval_s=0.3)
    second = make_importer(batch_max_files=50, rescan_interval_s=0.3)
    (stop1, task1), (stop2, task2) = await run(first), await run(second)
    try:
        await eventually(
            lambda: first.passes >= 1 and second.passes >= 1, timeout=10, interval=0.02
        )
        drop_burst(sandbox, files)

        async def all_applied() -> bool:
            return await count(sandbox, "import_ledger") == files

        await eventually(all_applied, timeout=60, interval=0.1)
        await eventually(lambda: not export_names(sandbox.exports))
        # neither fell over the other's moves
        assert not task1.done()
        assert not task2.done()
    finally:
        stop1.set()
        stop2.set()
        await asyncio.wait_for(asyncio.gather(task1, task2), 10)
    assert first.totals.applied + second.totals.applied == files
    assert first.totals.quarantined == second.totals.quarantined == 0
    assert await latest_versions(sandbox) == expected_versions(files)
    archived = os.listdir(first.archive_dir)
    assert len({n.split(".jsonl")[0] for n in archived}) == files
