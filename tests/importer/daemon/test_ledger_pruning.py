"""The import ledger keeps what exactly-once needs and no more: pruned below the lowest open gap
and behind the newest rows, a pruned file seen again is still a duplicate, and a missing file
still applies when it comes."""

from __future__ import annotations

import uuid

from importer.daemon import ledger
from tests.conftest import MakeImporter
from tests.importer.files import count, publish, quarantined, query, user_record, user_version
from tests.support import Sandbox


async def ledger_seqs(sandbox: Sandbox) -> list[int]:
    rows = await query(sandbox, "SELECT seq FROM import_ledger ORDER BY seq")
    return [r["seq"] for r in rows]


async def test_pruning_keeps_the_rows_above_the_lowest_gap_and_a_replay_stays_a_duplicate(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    ann = uuid.uuid4()
    copies: dict[int, bytes] = {}
    for seq in range(1, 31):
        if seq != 20:  # lost on the way: a gap
            copies[seq] = publish(
                sandbox.exports, sandbox.signer, seq, user_record(ann, seq)
            ).path.read_bytes()
    await importer.scan_once()
    assert len(await ledger_seqs(sandbox)) == 29

    removed = await ledger.prune(importer.sessions, keep=5)
    assert removed == 19  # 1-19: below the gap; 21-30 stay for the file that may still come
    assert await ledger_seqs(sandbox) == list(range(21, 31))

    # a genuine old file replayed after its row went: a duplicate, not applied again
    (sandbox.exports / "changes-000000000005.jsonl").write_bytes(copies[5])
    result = await importer.scan_once()
    assert (result.applied, result.duplicates, result.quarantined) == (0, 1, 0)
    assert await user_version(sandbox, ann) == 30
    stats = await query(sandbox, "SELECT files_applied, last_seq FROM sync_stream_stats")
    assert [(r["files_applied"], r["last_seq"]) for r in stats] == [(29, 30)]

    # a genuine file numbered again after its place was pruned (a restore that went unnoticed):
    # a conflict, as if the row were still there, never a silent duplicate
    publish(sandbox.exports, sandbox.signer, 3, user_record(ann, 99))
    result = await importer.scan_once()
    assert (result.applied, result.duplicates, result.quarantined) == (0, 0, 1)
    assert await quarantined(sandbox) == {"changes-000000000003.jsonl": "ledger_conflict"}
    assert await user_version(sandbox, ann) == 30

    # the missing file still applies when it comes, and the gap closes
    publish(sandbox.exports, sandbox.signer, 20, user_record(uuid.uuid4(), 1))
    assert (await importer.scan_once()).applied == 1
    assert await count(sandbox, "sync_gaps") == 0

    # with no gap left, only the newest rows stay
    assert await ledger.prune(importer.sessions, keep=5) == 6
    assert await ledger_seqs(sandbox) == list(range(26, 31))
    assert await ledger.prune(importer.sessions, keep=5) == 0
