"""The Response side notices it was restored from a backup and numbers on in a new generation.

Backups are real ``pg_dump``/``pg_restore`` runs against the Response database; the relay is the
worker's own, with the watch a worker process has (``jobs.numbering``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.db import make_sessionmaker
from exchange.marks import Mark, mark_path, write_mark
from exchange.signing import Signer
from jobs.numbering import Began, GenerationWatch, RolledBack
from jobs.relay import OutboxRelay
from netsync.db import make_engine
from tests.backups import dump, restore
from tests.commands import as_json, netsync
from tests.factories import admin_headers, create_user
from tests.importer.files import body_lines
from tests.queries import fetch
from tests.support import Sandbox


def header(path: Path) -> dict[str, Any]:
    head: dict[str, Any] = orjson.loads(body_lines(path.read_bytes())[0])
    return head


class Worker:
    """What a worker process holds: a relay with its watch; a new one per process start."""

    def __init__(self, sandbox: Sandbox) -> None:
        settings = sandbox.response_settings()
        self.engine = make_engine(settings.database_url, pool_size=2)
        self.began: list[Began] = []

        async def on_begin(began: Began) -> None:
            self.began.append(began)

        sessions = make_sessionmaker(self.engine)
        self.watch = GenerationWatch(sessions, sandbox.exports, sandbox.signer, on_begin=on_begin)
        self.relay = OutboxRelay(
            sessions,
            sandbox.exports,
            sandbox.signer,
            recipients=sandbox.recipients,
            generations=self.watch,
        )

    async def export(self) -> list[str]:
        """Number and publish what is pending, as a sync job does; the files' names."""
        names = []
        while (published := await self.relay.publish_next()) is not None:
            names.append(published[1].name)
        return names

    async def close(self) -> None:
        await self.engine.dispose()


async def test_a_restored_database_numbers_its_next_file_in_a_new_generation(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    before = Worker(sandbox)
    try:
        await create_user(api, admin, "judy")
        assert await before.export() == ["changes-000000000001.jsonl"]
        await dump(sandbox.services.response_url, sandbox.root / "backup.dump")
        await create_user(api, admin, "kim")  # undone by the restore below
        assert await before.export() == ["changes-000000000002.jsonl"]
    finally:
        await before.close()
    os.unlink(sandbox.exports / "changes-000000000002.jsonl")  # carried across already
    await restore(sandbox.services.response_url, sandbox.root / "backup.dump")

    after = Worker(sandbox)  # the restarted worker
    try:
        await create_user(api, admin, "lee")
        # numbered on above the mark: no name of the undone timeline is taken again
        assert await after.export() == ["changes-000000000003.jsonl"]
    finally:
        await after.close()
    head = header(sandbox.exports / "changes-000000000003.jsonl")
    assert head["generation"] > 0
    assert head["since_seq"] == 2
    assert [b.generation for b in after.began] == [head["generation"]]
    rows = await fetch(
        sandbox.services.response_url, "SELECT generation, reason, detail FROM export_generations"
    )
    assert [(r["generation"], r["reason"]) for r in rows] == [(head["generation"], "restored")]
    assert "changes: file 2 (generation 0) was numbered" in rows[0]["detail"]
    # the next start finds nothing to do: the marks are of the older generation now
    again = Worker(sandbox)
    try:
        await create_user(api, admin, "max")
        assert await again.export() == ["changes-000000000004.jsonl"]
        assert again.began == []
    finally:
        await again.close()
    assert (
        header(sandbox.exports / "changes-000000000004.jsonl")["generation"] == head["generation"]
    )


async def test_a_forged_replayed_or_linked_mark_begins_no_generation(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    worker = Worker(sandbox)
    try:
        await create_user(api, admin, "judy")
        await create_user(api, admin, "kim")
        await worker.export()
        mark = mark_path(sandbox.exports, "changes")
        genuine_old = mark.read_bytes()
        # a mark far ahead, signed by a key that is not the Response side's
        write_mark(sandbox.exports, Signer.generate(), "changes", Mark(0, 999))
        assert await worker.watch.check() is None
        # the genuine mark with a higher number edited in (its signature no longer holds)
        mark.write_bytes(genuine_old.replace(b'"seq":1', b'"seq":999'))
        assert await worker.watch.check() is None
        # a link to a genuine mark ahead: never followed
        ahead = sandbox.root / "ahead.mark"
        write_mark(sandbox.exports, sandbox.signer, "changes", Mark(0, 999))
        os.replace(mark, ahead)
        mark.symlink_to(ahead)
        assert await worker.watch.check() is None
        # the genuine older mark replayed: the database is ahead of it
        mark.unlink()
        mark.write_bytes(genuine_old)
        assert await worker.watch.check() is None
        assert worker.began == []
    finally:
        await worker.close()
    rows = await fetch(
        sandbox.services.response_url, "SELECT count(*) AS n FROM export_generations"
    )
    assert rows[0]["n"] == 0


async def test_an_operator_begins_a_generation_and_the_next_files_carry_it(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    began = as_json(netsync(sandbox, "streams", "new-generation", "--reason", "drill", "--json"))
    assert began["generation"] > 0
    assert began["previous"] == 0
    assert len(began["snapshots"]) == 3  # users, settings, profile types, enqueued at once
    shown = as_json(netsync(sandbox, "streams", "show", "--json"))
    assert [(g["generation"], g["reason"]) for g in shown["generations"]] == [
        (began["generation"], "operator")
    ]
    assert shown["rolled_back"] == []
    worker = Worker(sandbox)
    try:
        await create_user(api, admin, "judy")
        assert await worker.export() == ["changes-000000000001.jsonl"]
    finally:
        await worker.close()
    head = header(sandbox.exports / "changes-000000000001.jsonl")
    assert (head["generation"], head["since_seq"]) == (began["generation"], 0)


async def test_a_mark_never_goes_down_and_a_generation_outranks_the_marks_it_saw(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    far = 4_000_000_000_000  # a generation begun on the undone timeline, by a clock far ahead
    write_mark(sandbox.exports, sandbox.signer, "changes", Mark(far, 7))
    assert write_mark(sandbox.exports, sandbox.signer, "changes", Mark(far, 3)) == Mark(far, 7)
    admin = await admin_headers(api, sandbox.response_settings())
    worker = Worker(sandbox)
    try:
        await create_user(api, admin, "judy")
        assert await worker.export() == ["changes-000000000008.jsonl"]
        # the database had never seen generation `far`: it was restored to before it began
        assert [b.generation > far for b in worker.began] == [True]
        # a second restore within the minute: numbering waits rather than reuse numbers
        write_mark(sandbox.exports, sandbox.signer, "changes", Mark(worker.began[0].generation, 99))
        with pytest.raises(RolledBack):
            await worker.watch.check()
    finally:
        await worker.close()
    head = header(sandbox.exports / "changes-000000000008.jsonl")
    assert (head["generation"], head["since_seq"]) == (worker.began[0].generation, 7)
