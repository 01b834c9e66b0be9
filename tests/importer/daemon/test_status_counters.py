"""The per-stream counters the sync status reads agree with the ledger they stand in for."""

from __future__ import annotations

import uuid

from tests.conftest import MakeImporter
from tests.importer.files import (
    publish,
    publish_settings_snapshot,
    query,
    setting_record,
    user_record,
)
from tests.support import Sandbox

_FROM_THE_LEDGER = """
    SELECT l.stream, c.files, l.seq, l.exported_at, c.applied_at
    FROM import_ledger AS l
    JOIN (SELECT stream, count(*) AS files, max(applied_at) AS applied_at
          FROM import_ledger GROUP BY stream) AS c ON c.stream = l.stream
    WHERE l.seq = (SELECT max(seq) FROM import_ledger AS m WHERE m.stream = l.stream)
    ORDER BY l.stream
"""
_COUNTERS = """
    SELECT stream, files_applied, last_seq, last_exported_at, last_applied_at
    FROM sync_stream_stats ORDER BY stream
"""


async def test_counters_follow_every_applied_file_and_ignore_duplicates_and_refusals(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    uid = uuid.uuid4()
    first = publish(sandbox.exports, sandbox.signer, 1, user_record(uid, 1))
    again = first.path.read_bytes()
    publish(sandbox.exports, sandbox.signer, 3, user_record(uid, 3))  # 2 is missing: a gap
    publish_settings_snapshot(sandbox, [setting_record("a.b", 1)])
    assert (await importer.scan_once()).applied == 3
    first.path.write_bytes(again)  # a duplicate
    publish(sandbox.exports, sandbox.signer, 2, user_record(uid, 2))  # the late file
    publish(sandbox.exports, sandbox.signer, 4, user_record(uid, 5), stream="changes")
    (sandbox.exports / "changes-000000000009.jsonl").write_bytes(b"forged\n")
    result = await importer.scan_once()
    assert (result.applied, result.duplicates, result.quarantined) == (2, 1, 1)

    counters = [tuple(r) for r in await query(sandbox, _COUNTERS)]
    assert counters == [tuple(r) for r in await query(sandbox, _FROM_THE_LEDGER)]
    assert [(c[0], c[1], c[2]) for c in counters] == [
        ("changes", 4, 4),
        ("snapshot_settings", 1, 1),
    ]
