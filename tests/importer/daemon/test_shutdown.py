"""SIGTERM mid-burst, to a real ``python -m importer`` process: the batch being applied commits
or rolls back whole, every committed file is archived before the process exits, and a restart
finishes the burst without applying anything twice."""

from __future__ import annotations

import os
import signal

import pytest

from tests.importer.files import (
    count,
    drop_burst,
    expected_versions,
    export_names,
    latest_versions,
    query,
)
from tests.processes import Process, importer
from tests.support import Sandbox, eventually

pytestmark = pytest.mark.slow


async def test_sigterm_mid_burst_leaves_no_partial_state(
    sandbox: Sandbox, procs: list[Process]
) -> None:
    files = 3_000
    drop_burst(sandbox, files)
    first = importer(sandbox, NETSYNC_BATCH_MAX_FILES="50").start()
    procs.append(first)

    async def started_applying() -> bool:
        return await count(sandbox, "import_ledger") > 0

    await eventually(started_applying, timeout=30, interval=0.005)
    assert first.proc is not None
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(20) == 0, first.output()
    assert "importer stopped" in first.output()

    ledger = {r["file_name"] for r in await query(sandbox, "SELECT file_name FROM import_ledger")}
    waiting = set(export_names(sandbox.exports))
    archive = sandbox.archive
    assert 0 < len(ledger) < files, "the burst must be interrupted for this test to mean much"
    assert ledger.isdisjoint(waiting)  # nothing applied is left behind in the exports dir
    assert set(os.listdir(archive)) == ledger  # and nothing unapplied was archived
    assert len(ledger) + len(waiting) == files

    procs.append(importer(sandbox, name="importer-restarted").start())

    async def finished() -> bool:
        return await count(sandbox, "import_ledger") == files and not export_names(sandbox.exports)

    await eventually(finished, timeout=60, interval=0.1)
    archived = os.listdir(archive)
    assert len(archived) == files
    assert not [n for n in archived if ".duplicate-" in n]
    assert await latest_versions(sandbox) == expected_versions(files)
