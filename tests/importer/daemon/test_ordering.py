"""Order, replays and gaps: every file applies once, an older state never wins, and a missing
sequence number is recorded, reported and alerted on until its file arrives or a snapshot heals
it."""

from __future__ import annotations

import logging
import shutil
import uuid

import pytest

from importer.daemon.gaps import heal_through
from importer.daemon.loop import Importer
from importer.views import open_gaps
from tests.importer.conftest import MakeImporter
from tests.importer.files import count, export_names, publish, query, user_record, user_version
from tests.support import Sandbox, eventually


async def gaps(sandbox: Sandbox) -> list[tuple[int, int]]:
    rows = await query(sandbox, "SELECT first_seq, last_seq FROM sync_gaps ORDER BY first_seq")
    return [(r["first_seq"], r["last_seq"]) for r in rows]


async def test_a_replayed_signed_file_changes_nothing(sandbox: Sandbox, daemon: Importer) -> None:
    uid = uuid.uuid4()
    old = publish(sandbox.exports, sandbox.signer, 1, user_record(uid, 1, password_hash="h" * 30))
    keep = sandbox.root / "old-copy"
    shutil.copy(old.path, keep)
    publish(sandbox.exports, sandbox.signer, 2, user_record(uid, 2, password_hash="n" * 30))

    async def at_two() -> bool:
        return await user_version(sandbox, uid) == 2 and not export_names(sandbox.exports)

    await eventually(at_two)
    shutil.copy(keep, old.path)  # the old file, validly signed, shows up again
    await eventually(lambda: not export_names(sandbox.exports))
    assert await user_version(sandbox, uid) == 2
    rows = await query(sandbox, "SELECT password_hash FROM synced_users WHERE id = $1", uid)
    assert rows[0]["password_hash"] == "n" * 30
    assert await count(sandbox, "import_ledger") == 2
    assert await gaps(sandbox) == []


async def test_files_arriving_out_of_order_end_at_the_newest_state(
    sandbox: Sandbox, daemon: Importer
) -> None:
    uid = uuid.uuid4()
    for seq in (3, 1, 2):
        publish(sandbox.exports, sandbox.signer, seq, user_record(uid, seq))

        async def applied(seq: int = seq) -> bool:
            rows = await query(sandbox, "SELECT 1 FROM import_ledger WHERE seq = $1", seq)
            return bool(rows)

        await eventually(applied)
    assert await user_version(sandbox, uid) == 3
    assert await gaps(sandbox) == []  # 3 first opened 1..2; both arrived


async def test_a_gap_is_recorded_reported_and_closed_when_the_missing_file_arrives(
    sandbox: Sandbox, make_importer: MakeImporter, caplog: pytest.LogCaptureFixture
) -> None:
    importer = make_importer(gap_alert_after_s=0.0)
    a, b = uuid.uuid4(), uuid.uuid4()
    for seq in (1, 2, 5, 6, 9):
        publish(sandbox.exports, sandbox.signer, seq, user_record(a if seq != 6 else b, seq))
    with caplog.at_level(logging.WARNING, logger="importer"):
        await importer.scan_once()
    # applying went on past the holes
    assert (await user_version(sandbox, a), await user_version(sandbox, b)) == (9, 6)
    assert await gaps(sandbox) == [(3, 4), (7, 8)]
    assert importer.gaps.stats.open_gaps == 2
    assert importer.gaps.stats.missing_files == 4
    alerts = [r for r in caplog.records if r.getMessage() == "sync gap still open"]
    assert {(r.first_seq, r.last_seq) for r in alerts} == {(3, 4), (7, 8)}  # type: ignore[attr-defined]

    publish(sandbox.exports, sandbox.signer, 4, user_record(b, 4))  # older than b's v6
    await importer.scan_once()
    assert await gaps(sandbox) == [(3, 3), (7, 8)]
    assert await user_version(sandbox, b) == 6
    for seq in (3, 7, 8):
        publish(sandbox.exports, sandbox.signer, seq, user_record(uuid.uuid4(), 1))
    await importer.scan_once()
    assert await gaps(sandbox) == []
    assert importer.gaps.stats.open_gaps == 0
    assert await count(sandbox, "import_ledger") == 9


async def test_snapshots_of_every_entity_type_heal_the_gaps_they_cover(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    for seq in (1, 4, 10, 20):
        publish(sandbox.exports, sandbox.signer, seq, user_record(uuid.uuid4(), 1))
    await importer.scan_once()
    assert await gaps(sandbox) == [(2, 3), (5, 9), (11, 19)]

    # a missing file may hold a change of any type: a users snapshot alone heals nothing
    async with importer.sessions() as session, session.begin():
        assert await heal_through(session, "user", 30) == 0
        assert await heal_through(session, "setting", 12) == 0
    assert await gaps(sandbox) == [(2, 3), (5, 9), (11, 19)]
    async with importer.sessions() as session, session.begin():
        closed = await heal_through(session, "profile_type", 15)
    assert closed == 2  # covered through 12, the lowest of the three marks
    assert await gaps(sandbox) == [(13, 19)]

    # snapshots ahead of everything applied: later files continue from them without a gap
    async with importer.sessions() as session, session.begin():
        for entity in ("user", "setting", "profile_type"):
            await heal_through(session, entity, 40)
    publish(sandbox.exports, sandbox.signer, 41, user_record(uuid.uuid4(), 1))
    await importer.scan_once()
    async with importer.sessions() as session:
        assert await open_gaps(session) == []
