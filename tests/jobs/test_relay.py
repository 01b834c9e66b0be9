"""The worker side of a change: wake-up on enqueue, and recovery of a file that was allocated
but never published."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from arq.worker import Worker, create_worker

from app.db import make_sessionmaker
from app.outbox.models import ExportFile
from exchange.writer import PublishedFile, publish_export
from jobs import relay as relay_module
from jobs.maintenance import prune_outbox
from jobs.relay import OutboxRelay
from jobs.worker import worker_settings
from netsync.config import to_libpq_url
from netsync.db import make_engine
from tests.commands import netsync
from tests.conftest import MakeImporter
from tests.factories import admin_headers, create_user
from tests.importer.files import record_lines
from tests.queries import fetch
from tests.support import Sandbox, eventually, running


async def test_an_enqueued_job_wakes_an_idle_worker_instead_of_waiting_for_its_poll(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    # A worker that would poll only every 30 s: the job still runs at once, because the
    # enqueue publishes a wake-up the worker listens for.
    settings = sandbox.response_settings(worker_poll_delay_s=30.0)
    lazy: Worker = create_worker(worker_settings(settings), handle_signals=False)
    async with running(lazy):
        await asyncio.sleep(1)  # idle, asleep in its poll
        admin = await admin_headers(api, settings)
        user = await create_user(api, admin, "ivan")

        async def done() -> bool:
            job = await api.get(f"/api/v1/jobs/{user['sync_job_id']}", headers=admin)
            return bool(job.json()["state"] == "complete")

        await eventually(done, timeout=10)


async def test_a_file_allocated_but_never_published_is_published_by_the_sweeper(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    settings = sandbox.response_settings()
    admin = await admin_headers(api, settings)
    await create_user(api, admin, "judy")  # no worker runs: the change waits in the outbox

    engine = make_engine(settings.database_url, pool_size=1)
    sessions = make_sessionmaker(engine)
    relay = OutboxRelay(sessions, sandbox.exports, sandbox.signer, recipients=sandbox.recipients)
    try:
        # A relay that crashes right after the allocation commit: the numbering is durable.
        allocation = await relay.allocate()
        assert allocation is not None
        seq = allocation.seq
        assert not list(sandbox.exports.glob("*.jsonl"))

        result = await relay.run()  # what the sweeper does
        assert [f.name for f in result.files] == [f"changes-{seq:012d}.jsonl"]
        async with sessions() as session:
            file = await session.get(ExportFile, ("changes", seq))
            assert file is not None
            assert file.published_at is not None
        first = (sandbox.exports / result.files[0].name).read_bytes()

        # Publishing the same file again (a relay that died after the rename) gives the same
        # records under the same name: the importer's ledger turns it into a no-op.
        async with sessions() as session, session.begin():
            file = await session.get(ExportFile, ("changes", seq))
            assert file is not None
            again = await relay._publish(session, file)
        assert again.name == result.files[0].name
        # the same records, in new ciphertext (sealing is randomised)
        assert record_lines(again.path.read_bytes()) == record_lines(first)
        assert (await relay.run()).files == []

        # The fast path (the rows handed back by the allocation) writes the very bytes the
        # recovery path (the rows read again) writes.
        await create_user(api, admin, "kim")
        published = await relay.publish_next()
        assert published is not None
        fresh, fast = published[0], published[1].path.read_bytes()
        async with sessions() as session:
            marked = await session.get(ExportFile, ("changes", fresh.seq))
            assert marked is not None
            assert marked.published_at is not None
            assert marked.sha256 == published[1].sha256
        async with sessions() as session, session.begin():
            file = await session.get(ExportFile, ("changes", fresh.seq))
            assert file is not None
            again = await relay._publish(session, file)
            assert record_lines(again.path.read_bytes()) == record_lines(fast)
    finally:
        await engine.dispose()


async def test_every_event_id_leaves_in_exactly_one_file(
    api: httpx.AsyncClient, sandbox: Sandbox, worker: Worker
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    users = await asyncio.gather(*(create_user(api, admin, f"kate{i}") for i in range(20)))

    def exported() -> list[str]:
        events: list[str] = []
        for path in sorted(sandbox.exports.glob("changes-*.jsonl")):
            for line in record_lines(path.read_bytes()):
                events.append(line.split(b'"event_id":"')[1].split(b'"')[0].decode())
        return events

    wanted = {u["sync_job_id"].removeprefix("sync:") for u in users}
    await eventually(lambda: wanted <= set(exported()))
    events = exported()
    assert len(events) == len(set(events))  # no event in two files
    assert all(uuid.UUID(e) for e in events)


async def test_a_backlog_of_large_settings_leaves_in_files_capped_by_bytes(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    # Before: 1,000 changes per file whatever their size, so 1,000 settings of 60 KiB made a
    # 60 MB file the importer quarantined as too_large. Now a file is capped by bytes too.
    settings = sandbox.response_settings()
    admin = await admin_headers(api, settings)
    big = "x" * 60_000
    for i in range(40):  # no worker runs: they wait in the outbox
        created = await api.post(
            "/api/v1/settings", json={"key": f"big.key_{i}", "value": big}, headers=admin
        )
        assert created.status_code == 201, created.text
    engine = make_engine(settings.database_url, pool_size=1)
    relay = OutboxRelay(
        make_sessionmaker(engine),
        sandbox.exports,
        sandbox.signer,
        recipients=sandbox.recipients,
        max_file_bytes=1_000_000,
    )
    try:
        result = await relay.run()
    finally:
        await engine.dispose()
    sizes = [f.path.stat().st_size for f in result.files]
    assert result.events == 41  # the 40 settings and the administrator created at start
    assert len(sizes) >= 3, sizes
    assert max(sizes) <= 1_000_000 + 61_000, sizes  # the cap, give or take one record


async def test_files_lost_in_transit_are_resent_and_only_the_lost_ones_apply(
    api: httpx.AsyncClient, sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    settings = sandbox.response_settings()
    admin = await admin_headers(api, settings)
    engine = make_engine(settings.database_url, pool_size=1)
    relay = OutboxRelay(
        make_sessionmaker(engine), sandbox.exports, sandbox.signer, recipients=sandbox.recipients
    )
    importer = make_importer()
    try:
        names: list[str] = []
        for i in range(4):  # one file each (no worker runs: the relay is run by hand)
            await create_user(api, admin, f"carried{i}")
            names += [f.name for f in (await relay.run()).files]
        assert len(names) == 4
        for name in names[1:3]:  # the carrier between the networks drops two files
            (sandbox.exports / name).unlink()
        assert (await importer.scan_once()).applied == 2
        gaps = await fetch(
            sandbox.services.request_url, "SELECT first_seq, last_seq FROM sync_gaps"
        )
        assert [(g["first_seq"], g["last_seq"]) for g in gaps] == [(2, 3)]  # reported

        # the operator resends the range, as the runbook says (a real CLI process)
        first, last = int(names[0][8:20]), int(names[-1][8:20])
        resent = netsync(sandbox, "export", "resend", "changes", "--from-seq", str(first),
                         "--to-seq", str(last + 5), "--json")  # fmt: skip
        assert resent.returncode == 0, resent.stderr
        answer = json.loads(resent.stdout)
        assert answer["files"] == names
        assert answer["unknown"] == list(range(last + 1, last + 6))  # never allocated
        result = await importer.scan_once()
        assert (result.applied, result.duplicates, result.quarantined) == (2, 2, 0)
        assert await fetch(sandbox.services.request_url, "SELECT 1 FROM sync_gaps") == []
        users = await fetch(sandbox.services.response_url, "SELECT count(*) AS n FROM users")
        synced = await fetch(sandbox.services.request_url, "SELECT count(*) AS n FROM synced_users")
        assert synced[0]["n"] == users[0]["n"]
    finally:
        await engine.dispose()


async def test_published_outbox_rows_are_pruned_after_the_retention_in_short_batches(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    settings = sandbox.response_settings()
    admin = await admin_headers(api, settings)
    engine = make_engine(settings.database_url, pool_size=1)
    sessions = make_sessionmaker(engine)
    relay = OutboxRelay(sessions, sandbox.exports, sandbox.signer, recipients=sandbox.recipients)
    url = sandbox.services.response_url
    try:
        names: list[str] = []
        for i in range(4):
            await create_user(api, admin, f"old{i}")
            names += [f.name for f in (await relay.run()).files]
        await create_user(api, admin, "pending")  # in the outbox, not exported yet
        await fetch(url, "UPDATE export_files SET published_at = now() - interval '8 days'")
        seqs = [int(n[8:20]) for n in names]

        removed = await prune_outbox(sessions, datetime.now(UTC) - timedelta(days=7), batch=1)
        # every old file's rows go, but the newest file's (a quiet stream keeps its last state)
        # and the pending row, which has no file yet
        kept = await fetch(url, "SELECT export_seq FROM outbox_events ORDER BY id")
        assert [r["export_seq"] for r in kept] == [seqs[-1], None]
        files = await fetch(url, "SELECT seq FROM export_files WHERE stream = 'changes'")
        assert [r["seq"] for r in files] == [seqs[-1]]
        assert removed["export_files"] == len(seqs) - 1
        # a resend of what retention removed is refused by number, the newest still goes
        resent = await relay.resend(seqs[0], seqs[-1])
        assert resent.unknown == seqs[:-1]
        assert [f.name for f in resent.files] == [names[-1]]
    finally:
        await engine.dispose()


async def test_a_file_whose_rows_are_partly_gone_is_never_resent_with_fewer(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    settings = sandbox.response_settings()
    admin = await admin_headers(api, settings)
    engine = make_engine(settings.database_url, pool_size=1)
    relay = OutboxRelay(
        make_sessionmaker(engine), sandbox.exports, sandbox.signer, recipients=sandbox.recipients
    )
    url = sandbox.services.response_url
    try:
        await create_user(api, admin, "whole")
        await create_user(api, admin, "partial")
        (file,) = (await relay.run()).files  # the administrator and both users in one file
        seq = int(file.name[8:20])
        file.path.unlink()
        await fetch(url, "DELETE FROM outbox_events WHERE id = (SELECT max(id) FROM outbox_events)")
        resent = await relay.resend(seq, seq)
        assert (resent.files, resent.incomplete) == ([], [seq])
        assert not file.path.exists()  # nothing published under its id with fewer records
    finally:
        await engine.dispose()


async def test_a_connection_the_server_drops_while_a_file_is_written_costs_no_second_copy(
    api: httpx.AsyncClient, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server drops the relay's connections (a restart, a failover) while the file is being
    written: the published mark must still land, so that no retry publishes the file again."""
    settings = sandbox.response_settings()
    admin = await admin_headers(api, settings)
    await create_user(api, admin, "lena")  # no worker runs: the change waits in the outbox
    name = f"relay-{uuid.uuid4().hex[:8]}"
    engine = make_engine(settings.database_url, pool_size=1, application_name=name)
    relay = OutboxRelay(
        make_sessionmaker(engine), sandbox.exports, sandbox.signer, recipients=sandbox.recipients
    )
    writes: list[tuple[str, str]] = []
    original = publish_export

    def drop_connections() -> None:
        async def terminate() -> None:
            conn = await asyncpg.connect(to_libpq_url(sandbox.services.response_url))
            try:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = $1",
                    name,
                )
            finally:
                await conn.close()

        asyncio.run(terminate())

    def publish_and_drop(*args: Any, **kwargs: Any) -> PublishedFile:
        published = original(*args, **kwargs)
        writes.append((published.name, published.sha256))
        drop_connections()
        return published

    monkeypatch.setattr(relay_module, "publish_export", publish_and_drop)
    try:
        rows = await fetch(
            sandbox.services.response_url,
            "SELECT event_id FROM outbox_events WHERE export_seq IS NULL",
        )
        event_id = rows[-1]["event_id"]  # the admin's and lena's changes wait: one file
        result = await relay.export_event(event_id)
        assert result["published_now"] is True
        assert [name for name, _ in writes] == [result["file"]]  # written once
        async with make_sessionmaker(engine)() as session:
            file = await session.get(ExportFile, ("changes", result["seq"]))
            assert file is not None
            assert file.published_at is not None  # marked: nothing will publish it again
            assert file.sha256 == writes[0][1]
    finally:
        await engine.dispose()
