"""A full exports disk fails a snapshot at once, publishes nothing, and harms nothing after it.

The exports directory is a small tmpfs filled to the last byte (mounting needs root; the suite
runs as root in CI). Sizes are chosen so the write that fails is the one of the COPY's last chunk:
the case in which an error raised inside asyncpg's COPY output left the connection hanging, and
with it the job, its advisory lock and every later tick of the schedule.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from app.db import make_sessionmaker
from jobs.snapshots import SnapshotExport, export_snapshot
from netsync.db import make_engine
from tests.chaos.disk import fill, mount_tmpfs, unmount
from tests.queries import fetch
from tests.support import Sandbox


@pytest.fixture
def full_exports(sandbox: Sandbox) -> Iterator[None]:
    if not mount_tmpfs(sandbox.exports, size="1M"):
        pytest.skip("mounting a tmpfs for the exports directory needs root")
    try:
        yield
    finally:
        unmount(sandbox.exports)


@pytest.mark.parametrize("settings", [1, 50, 400])
async def test_a_snapshot_on_a_full_disk_fails_at_once_and_the_next_one_publishes(
    sandbox: Sandbox, full_exports: None, settings: int
) -> None:
    await fetch(
        sandbox.services.response_url,
        "INSERT INTO settings (id, key, value, version)"
        " SELECT gen_random_uuid(), 'disk.full.k' || g, '\"v\"', 1 FROM generate_series(1, $1) g",
        settings,
    )
    engine = make_engine(sandbox.services.response_url, pool_size=1)

    def export() -> Coroutine[Any, Any, SnapshotExport]:
        return export_snapshot(
            engine,
            make_sessionmaker(engine),
            sandbox.exports,
            sandbox.signer,
            "setting",
            recipients=sandbox.recipients,
        )

    try:
        (sandbox.exports / ".staging").mkdir(exist_ok=True)
        filler = sandbox.exports / ".filler"
        await asyncio.to_thread(fill, filler)

        with pytest.raises(OSError, match="No space left on device") as refused:
            await asyncio.wait_for(
                export(),
                timeout=20,
            )
        assert refused.value.errno == errno.ENOSPC
        assert sorted(os.listdir(sandbox.exports)) == [".filler", ".staging"]
        assert os.listdir(sandbox.exports / ".staging") == []

        filler.unlink()  # space returns: the same pool, the same file number, published whole
        done = await asyncio.wait_for(
            export(),
            timeout=20,
        )
        assert (done.seq, done.records) == (1, settings)
        assert (sandbox.exports / done.file).exists()
    finally:
        await engine.dispose()
