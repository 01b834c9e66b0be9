"""Snapshots end to end: exported by the bulk worker's code, applied by the importer's real loop.

What a user checks: the Request database's rows (values, versions, tombstones), the import
ledger, the quarantine, and the audit trail of job results.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from arq.worker import create_worker

from app.db import make_sessionmaker
from app.queue.client import redis_pool
from app.scheduling.registry import ScheduleSettings
from exchange.format import CHANGES_STREAM
from exchange.signing import Keyring, Signer
from exchange.writer import publish_export
from importer.daemon.loop import Importer
from importer.db import make_sessionmaker as request_sessionmaker
from jobs.bulk import bulk_worker_settings
from jobs.snapshots import export_snapshot
from netsync.db import make_engine
from tests.importer.files import publish_settings_snapshot, user_record
from tests.queries import fetch
from tests.support import Sandbox, eventually


async def _setting(sandbox: Sandbox, key: str, value: object, version: int) -> uuid.UUID:
    setting_id = uuid.uuid4()
    await fetch(
        sandbox.services.response_url,
        "INSERT INTO settings (id, key, value, version) VALUES ($1, $2, $3::jsonb, $4)",
        setting_id,
        key,
        orjson.dumps(value).decode(),
        version,
    )
    return setting_id


async def _set_changes_mark(sandbox: Sandbox, last_seq: int) -> None:
    """What the outbox relay leaves behind after allocating ``last_seq`` changes files."""
    await fetch(
        sandbox.services.response_url,
        "INSERT INTO export_streams (stream, last_seq) VALUES ($1, $2)"
        " ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq",
        CHANGES_STREAM,
        last_seq,
    )


def _change(setting_id: uuid.UUID, key: str, value: object, version: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "entity": "setting",
        "entity_id": str(setting_id),
        "version": version,
        "op": "upsert",
        "occurred_at": datetime.now(UTC).isoformat(),
        "data": {"key": key, "value": value},
    }


def _changes_file(sandbox: Sandbox, seq: int, records: list[dict[str, Any]]) -> None:
    publish_export(
        sandbox.exports,
        sandbox.signer,
        recipients=sandbox.recipients,
        stream=CHANGES_STREAM,
        seq=seq,
        kind="changes",
        file_id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        records=records,
    )


async def _snapshot(sandbox: Sandbox, entity: str = "setting", signer: Signer | None = None) -> Any:
    engine = make_engine(sandbox.services.response_url)
    try:
        return await export_snapshot(
            engine,
            make_sessionmaker(engine),
            sandbox.exports,
            signer or sandbox.signer,
            entity,
            recipients=sandbox.recipients,
        )
    finally:
        await engine.dispose()


async def _synced(sandbox: Sandbox) -> dict[str, asyncpg.Record]:
    rows = await fetch(
        sandbox.services.request_url,
        "SELECT key, value, version, deleted, last_changes_seq FROM synced_settings",
    )
    return {r["key"]: r for r in rows}


async def _applied(sandbox: Sandbox, stream: str, seq: int) -> bool:
    rows = await fetch(
        sandbox.services.request_url,
        "SELECT 1 FROM import_ledger WHERE stream = $1 AND seq = $2",
        stream,
        seq,
    )
    return bool(rows)


async def test_a_snapshot_older_than_an_applied_change_does_not_overwrite_it(
    sandbox: Sandbox, importer: Importer
) -> None:
    theme = await _setting(sandbox, "ui.theme", "light", 1)
    snapshot = await _snapshot(sandbox)  # read while ui.theme was still "light", version 1
    # meanwhile the change to version 2 was exported and applied first
    _changes_file(sandbox, 1, [_change(theme, "ui.theme", "dark", 2)])
    await eventually(lambda: _applied(sandbox, CHANGES_STREAM, 1))
    await eventually(lambda: _applied(sandbox, snapshot.stream, snapshot.seq))

    row = (await _synced(sandbox))["ui.theme"]
    assert (row["value"], row["version"], row["deleted"]) == ('"dark"', 2, False)


async def test_a_snapshot_heals_a_lost_change_and_removes_what_is_gone(
    sandbox: Sandbox, importer: Importer
) -> None:
    kept = await _setting(sandbox, "mail.host", "smtp.example", 1)
    gone = uuid.uuid4()  # deleted on the Response side; its delete file was lost
    _changes_file(
        sandbox,
        1,
        [_change(kept, "mail.host", "smtp.example", 1), _change(gone, "old.flag", True, 1)],
    )
    await eventually(lambda: _applied(sandbox, CHANGES_STREAM, 1))
    # a change whose file never arrives: only the snapshot can bring it
    await fetch(
        sandbox.services.response_url,
        "UPDATE settings SET value = '\"smtp2.example\"', version = 2 WHERE id = $1",
        kept,
    )
    await _set_changes_mark(sandbox, 3)
    # a setting created after the snapshot is read (changes file 5, above the mark of 3)
    newer = uuid.uuid4()

    snapshot = await _snapshot(sandbox)
    assert snapshot.changes_seq == 3
    _changes_file(sandbox, 5, [_change(newer, "new.flag", 1, 1)])
    await eventually(lambda: _applied(sandbox, CHANGES_STREAM, 5))
    await eventually(lambda: _applied(sandbox, snapshot.stream, snapshot.seq))

    rows = await _synced(sandbox)
    assert (rows["mail.host"]["value"], rows["mail.host"]["version"]) == ('"smtp2.example"', 2)
    assert rows["mail.host"]["deleted"] is False
    assert rows["old.flag"]["deleted"] is True  # absent from a complete snapshot: removed
    assert rows["new.flag"]["deleted"] is False  # newer than the snapshot's mark: kept
    latest = sandbox.exports / "latest" / "snapshot_settings.jsonl"
    assert orjson.loads(latest.read_bytes().split(b"\n")[0])["seq"] == snapshot.seq


async def test_a_late_changes_file_cannot_bring_back_what_a_snapshot_removed(
    sandbox: Sandbox, importer: Importer
) -> None:
    gone = uuid.uuid4()
    _changes_file(sandbox, 1, [_change(gone, "old.flag", True, 1)])
    await eventually(lambda: _applied(sandbox, CHANGES_STREAM, 1))
    # On the Response side old.flag was changed (file 2), then deleted (file 3); both files
    # are held up on the way, and a snapshot read after them removes it.
    await _set_changes_mark(sandbox, 3)
    snapshot = await _snapshot(sandbox)
    await eventually(lambda: _applied(sandbox, snapshot.stream, snapshot.seq))
    assert (await _synced(sandbox))["old.flag"]["deleted"] is True

    # The change arrives late, with a version above the one the tombstone kept.
    _changes_file(sandbox, 2, [_change(gone, "old.flag", False, 2)])
    await eventually(lambda: _applied(sandbox, CHANGES_STREAM, 2))
    row = (await _synced(sandbox))["old.flag"]
    assert (row["deleted"], row["version"], row["value"]) == (True, 1, "true")

    # A change of another type in a file below the settings snapshot's mark still applies:
    # no users snapshot covers it.
    user = uuid.uuid4()
    _changes_file(sandbox, 3, [user_record(user, 1)])
    await eventually(lambda: _applied(sandbox, CHANGES_STREAM, 3))
    users = await fetch(sandbox.services.request_url, "SELECT id FROM synced_users")
    assert [r["id"] for r in users] == [user]


async def test_a_tampered_snapshot_is_quarantined_and_nothing_of_it_is_applied(
    sandbox: Sandbox,
) -> None:
    for i in range(50):
        await _setting(sandbox, f"bulk.key_{i}", i, 1)
    snapshot = await _snapshot(sandbox)
    path = sandbox.exports / snapshot.file
    data = bytearray(path.read_bytes())
    assert b'"bulk.key_7"' not in data  # sealed: nothing to edit in clear, so flip a bit
    data[data.index(b"\n") + 500] ^= 1
    path.write_bytes(bytes(data))
    # and one signed by a key the Request Network does not trust
    await fetch(sandbox.services.response_url, "DELETE FROM settings WHERE key = 'bulk.key_1'")
    impostor = await _snapshot(sandbox, signer=Signer.generate())

    settings = sandbox.request_settings()
    engine = make_engine(settings.database_url, pool_size=2)
    daemon = Importer(
        settings, request_sessionmaker(engine), Keyring.from_sources(settings.trusted_keys_path)
    )
    daemon.prepare()
    try:
        result = await daemon.scan_once()
    finally:
        await engine.dispose()
    assert result.quarantined == 2
    assert await _synced(sandbox) == {}
    reasons = {
        orjson.loads(p.read_bytes())["file"]: orjson.loads(p.read_bytes())["reason"]
        for p in settings.quarantine_path.glob("*.reason.json")
    }
    assert reasons == {snapshot.file: "bad_signature", impostor.file: "unknown_key"}


async def test_users_and_profile_types_snapshots_arrive_whole(
    sandbox: Sandbox, importer: Importer
) -> None:
    profile = uuid.uuid4()
    await fetch(
        sandbox.services.response_url,
        "INSERT INTO profile_types (id, name, permissions, version)"
        " VALUES ($1, 'Auditor', '[\"read\", \"audit\"]', 3)",
        profile,
    )
    await fetch(
        sandbox.services.response_url,
        "INSERT INTO users (id, username, email, password_hash, role, is_active, profile_type_id,"
        " version) VALUES ($1, 'dana', NULL, $2, 'user', true, $3, 4)",
        uuid.uuid4(),
        "$argon2id$v=19$m=65536,t=3,p=4$" + "a" * 40,
        profile,
    )
    users = await _snapshot(sandbox, "user")
    types = await _snapshot(sandbox, "profile_type")
    await eventually(lambda: _applied(sandbox, users.stream, users.seq))
    await eventually(lambda: _applied(sandbox, types.stream, types.seq))
    user = (
        await fetch(
            sandbox.services.request_url,
            "SELECT username, role, is_active, profile_type_id, version, password_hash"
            " FROM synced_users",
        )
    )[0]
    assert (user["username"], user["role"], user["is_active"], user["version"]) == (
        "dana",
        "user",
        True,
        4,
    )
    assert user["profile_type_id"] == profile
    assert user["password_hash"].startswith("$argon2id$")
    ptype = (
        await fetch(
            sandbox.services.request_url, "SELECT name, permissions FROM synced_profile_types"
        )
    )[0]
    assert (ptype["name"], orjson.loads(ptype["permissions"])) == ("Auditor", ["read", "audit"])


async def test_an_on_demand_export_runs_in_the_bulk_worker_and_its_result_reaches_the_audit_trail(
    sandbox: Sandbox, importer: Importer
) -> None:
    await _setting(sandbox, "feature.x", True, 1)
    schedule = ScheduleSettings(_env_file=None).model_copy(
        update={
            f"schedule_{name}": "off"
            for name in (
                "export_settings",
                "export_users",
                "export_profile_types",
                "export_results",
                "system_monitoring",
                "cache_maintenance",
                "daily_stats",
                "retention_cleanup",
            )
        }
    )
    settings = sandbox.response_settings()
    run_id = f"run:{uuid.uuid4()}"  # job ids are global in the Redis database
    queue = redis_pool(sandbox.services.redis_url, queue_name=sandbox.bulk_queue)
    try:
        for function, job_id in (("export_settings", run_id), ("export_results", f"{run_id}-r")):
            job = await queue.enqueue_job(function, _job_id=job_id, _queue_name=sandbox.bulk_queue)
            assert job is not None
            worker = create_worker(
                bulk_worker_settings(settings, schedule), burst=True, handle_signals=False
            )
            try:
                await worker.main()
            finally:
                await worker.close()
    finally:
        await queue.aclose(close_connection_pool=True)

    rows: list[asyncpg.Record] = []

    async def arrived() -> bool:
        nonlocal rows
        rows = await fetch(
            sandbox.services.request_url,
            "SELECT job_id, function, status, summary FROM synced_job_results",
        )
        return bool(rows)

    await eventually(arrived)
    by_id = {r["job_id"]: r for r in rows}
    assert by_id[run_id]["function"] == "export_settings"
    assert by_id[run_id]["status"] == "complete"
    assert orjson.loads(by_id[run_id]["summary"])["records"] == 1
    assert "feature.x" in (await _synced(sandbox))


async def test_a_genuine_snapshot_with_a_record_outside_the_contract_is_refused_whole(
    sandbox: Sandbox,
) -> None:
    records = [_change(uuid.uuid4(), f"ok.key_{i}", i, 1) for i in range(30)]
    records[17]["data"]["key"] = "Not A Key"
    publish_settings_snapshot(sandbox, records)

    settings = sandbox.request_settings()
    engine = make_engine(settings.database_url, pool_size=2)
    daemon = Importer(
        settings, request_sessionmaker(engine), Keyring.from_sources(settings.trusted_keys_path)
    )
    daemon.prepare()
    try:
        result = await daemon.scan_once()
    finally:
        await engine.dispose()
    assert result.quarantined == 1
    assert await _synced(sandbox) == {}
    sidecar = next(settings.quarantine_path.glob("*.reason.json"))
    reason = orjson.loads(sidecar.read_bytes())
    assert reason["reason"] == "invalid_schema"
    assert "record 18" in reason["detail"]


async def test_a_snapshot_export_cancelled_on_its_last_piece_ends_and_publishes_nothing(
    sandbox: Sandbox, monkeypatch: Any
) -> None:
    """A job timeout or a shutdown cancels the export while COPY hands over its last piece (a
    small table is one piece): the cancellation must end the export, not leave the connection
    waiting for a COPY that already ended."""
    import asyncio

    from jobs import snapshots

    for n in range(5):
        await _setting(sandbox, f"cancel.key_{n}", n, 1)
    reached = asyncio.Event()
    gather = snapshots._gather

    async def slow_gather(chunk: bytes) -> None:
        reached.set()
        await asyncio.sleep(5)
        await gather(chunk)

    monkeypatch.setattr(snapshots, "_gather", slow_gather)
    engine = make_engine(sandbox.services.response_url)
    try:
        export = asyncio.create_task(
            export_snapshot(
                engine,
                make_sessionmaker(engine),
                sandbox.exports,
                sandbox.signer,
                "setting",
                recipients=sandbox.recipients,
            )
        )
        await asyncio.wait_for(reached.wait(), 10)
        export.cancel()
        done, _ = await asyncio.wait({export}, timeout=10)
        assert export in done, "the cancelled export hung"
        assert export.cancelled()
        async with engine.connect() as conn:  # the pool's connections still answer
            assert (await conn.exec_driver_sql("SELECT 1")).scalar() == 1
    finally:
        await asyncio.wait_for(engine.dispose(), 10)
    assert not [p for p in sandbox.exports.rglob("*") if p.is_file()]
