"""A restored Response database: its new generation's files outrank what the restore undid.

The Response side numbers on from its backup in a new, larger generation (``jobs.numbering``);
these tests hand the importer such files directly and check what a user of the Request side
would: whose password signs in, which entities exist, what the sync status says, and that no
genuine file is lost or quarantined.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from tests.conftest import MakeImporter
from tests.importer.files import (
    count,
    export_names,
    publish,
    publish_snapshot,
    quarantined,
    query,
    user_record,
)
from tests.support import Sandbox

G1 = 1_800_000_000_000  # a generation begun after a restore (its time in milliseconds)
OLD, NEW = "o" * 30, "n" * 30


def publish_in_g1(sandbox: Sandbox, seq: int, record: dict[str, Any], *, since: int) -> None:
    """A changes file of the generation a restored Response database began, numbered after
    ``since``."""
    publish(
        sandbox.exports, sandbox.signer, seq, record, header={"generation": G1, "since_seq": since}
    )


async def users(sandbox: Sandbox) -> dict[uuid.UUID, tuple[int, int, str | None, bool]]:
    rows = await query(
        sandbox, "SELECT id, generation, version, password_hash, deleted FROM synced_users"
    )
    return {
        r["id"]: (r["generation"], r["version"], r["password_hash"], r["deleted"]) for r in rows
    }


async def test_changes_after_a_restore_win_over_versions_the_restore_undid(
    sandbox: Sandbox, make_importer: MakeImporter, caplog: pytest.LogCaptureFixture
) -> None:
    importer = make_importer()
    ann = uuid.uuid4()
    # before the restore: ann reached version 3 (files 1-3); the backup held her at version 1
    for seq in (1, 2, 3):
        publish(sandbox.exports, sandbox.signer, seq, user_record(ann, seq, password_hash=OLD))
    await importer.scan_once()
    # the restored database numbers on from its file 1, in a new generation: file 2 again,
    # holding ann's next change at version 2, below the 3 the Request side holds
    publish_in_g1(sandbox, 2, user_record(ann, 2, password_hash=NEW), since=1)
    with caplog.at_level(logging.WARNING, logger="importer"):
        result = await importer.scan_once()
    assert result.applied == 1
    assert result.quarantined == 0
    assert (await users(sandbox))[ann] == (G1, 2, NEW, False)
    assert not export_names(sandbox.exports)
    assert await quarantined(sandbox) == {}
    ledger = await query(sandbox, "SELECT generation, seq FROM import_ledger ORDER BY 1, 2")
    assert [(r["generation"], r["seq"]) for r in ledger] == [(0, 1), (0, 2), (0, 3), (G1, 2)]
    began = [r for r in caplog.records if "new generation" in r.getMessage()]
    assert [r.levelno for r in began] == [logging.WARNING]
    assert began[0].generation == G1  # type: ignore[attr-defined]


async def test_a_reused_number_without_a_new_generation_is_a_ledger_conflict(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    """What a restore that went unnoticed looks like: quarantined and alerted, never archived
    as a duplicate (the operator's runbook: ``netsync streams new-generation``)."""
    importer = make_importer()
    ann = uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 1, user_record(ann, 1, password_hash=OLD))
    await importer.scan_once()
    publish(sandbox.exports, sandbox.signer, 1, user_record(ann, 2, password_hash=NEW))
    await importer.scan_once()
    assert await quarantined(sandbox) == {"changes-000000000001.jsonl": "ledger_conflict"}
    assert (await users(sandbox))[ann][2] == OLD


async def test_files_of_the_undone_timeline_arriving_late_are_superseded(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    ann = uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 1, user_record(ann, 1, password_hash=OLD))
    await importer.scan_once()
    publish_in_g1(sandbox, 2, user_record(ann, 2, password_hash=NEW), since=1)
    await importer.scan_once()
    # a file of the old generation, numbered before the restore but carried late, with a
    # higher version: what it holds was undone by the restore
    publish(sandbox.exports, sandbox.signer, 4, user_record(ann, 9, password_hash=OLD))
    result = await importer.scan_once()
    assert (result.superseded, result.applied, result.quarantined) == (1, 0, 0)
    assert (await users(sandbox))[ann] == (G1, 2, NEW, False)
    assert not export_names(sandbox.exports)
    archived = sorted(p.name for p in sandbox.archive.iterdir())
    assert "changes-000000000004.jsonl" in archived  # kept, not applied


async def test_a_snapshot_of_the_new_generation_brings_back_exactly_the_restored_state(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    ann, bob, cid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    # the backup held ann at version 1 and cid alive; after it, ann changed (v2), bob was
    # created, cid deleted, and file 4 of that timeline never arrived (a gap)
    publish(sandbox.exports, sandbox.signer, 1, user_record(ann, 1, password_hash=OLD))
    publish(sandbox.exports, sandbox.signer, 2, user_record(cid, 1, password_hash=OLD))
    publish(sandbox.exports, sandbox.signer, 3, user_record(ann, 2, password_hash=NEW))
    publish(
        sandbox.exports, sandbox.signer, 5, user_record(bob, 1), user_record(cid, 2, op="delete")
    )
    await importer.scan_once()
    assert await count(sandbox, "sync_gaps") == 1
    # the restored database (last file 2) snapshots what it holds, in its new generation
    restored = [user_record(ann, 1, password_hash=OLD), user_record(cid, 1, password_hash=OLD)]
    for entity, records in (("user", restored), ("setting", []), ("profile_type", [])):
        publish_snapshot(sandbox, entity, records, generation=G1, since_seq=0, changes_seq=2)
    result = await importer.scan_once()
    assert result.quarantined == 0
    held = await users(sandbox)
    assert held[ann] == (G1, 1, OLD, False)  # the change the restore undid, undone here too
    assert held[bob][0] == G1
    assert held[bob][3] is True
    assert held[cid] == (G1, 1, OLD, False)  # deleted after the backup: back
    assert await count(sandbox, "sync_gaps") == 0  # the old timeline's gap is moot
    status = await query(sandbox, "SELECT max(generation) AS g FROM sync_generations")
    assert status[0]["g"] == G1


async def test_a_file_lost_at_the_start_of_a_generation_is_a_gap(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    ann = uuid.uuid4()
    for seq in (1, 2, 3, 4, 5, 6):
        publish(sandbox.exports, sandbox.signer, seq, user_record(ann, seq))
    await importer.scan_once()
    # restored to file 4; the new generation's first file (5) is lost, its second arrives
    publish_in_g1(sandbox, 6, user_record(ann, 6), since=4)
    await importer.scan_once()
    rows = await query(sandbox, "SELECT first_seq, last_seq FROM sync_gaps")
    assert [(r["first_seq"], r["last_seq"]) for r in rows] == [(5, 5)]
    publish_in_g1(sandbox, 5, user_record(ann, 5), since=4)
    await importer.scan_once()
    assert await count(sandbox, "sync_gaps") == 0
    assert (await users(sandbox))[ann][:2] == (G1, 6)


async def test_a_gap_of_the_undone_timeline_stays_open_until_new_snapshots_cover_it(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    ann = uuid.uuid4()
    for seq in (1, 3):  # 2 is missing: what it held may still be in the restored database
        publish(sandbox.exports, sandbox.signer, seq, user_record(ann, seq))
    await importer.scan_once()
    publish_in_g1(sandbox, 4, user_record(ann, 4), since=3)
    await importer.scan_once()
    rows = await query(sandbox, "SELECT generation, first_seq, last_seq FROM sync_gaps")
    assert [(r["generation"], r["first_seq"], r["last_seq"]) for r in rows] == [(0, 2, 2)]
    for entity in ("user", "setting", "profile_type"):
        publish_snapshot(sandbox, entity, [], generation=G1, since_seq=0, changes_seq=4)
    await importer.scan_once()
    assert await count(sandbox, "sync_gaps") == 0
