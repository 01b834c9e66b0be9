"""``results`` files: the audit trail of the Response Network's jobs (``importer.daemon.results``).

What an auditor reading ``synced_job_results`` checks: every job once, its times as the worker
wrote them (one without an offset read as the importer's local time, as the driver reads
it), its summary as sent, a job exported twice kept as
it first arrived; and a genuine file the database refuses is quarantined whole.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from exchange.writer import PublishedFile
from tests.conftest import MakeImporter
from tests.importer.files import publish, quarantined, query
from tests.support import Sandbox


def job(job_id: str, *, function: str = "export_settings", **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "job_id": job_id,
        "function": function,
        "queue": "netsync:bulk",
        "status": "complete",
        "tries": 1,
        "enqueued_at": "2026-12-03T10:00:00+00:00",
        "started_at": "2026-12-03T10:00:01+00:00",
        "finished_at": "2026-12-03T10:00:02+00:00",
        "summary": {"records": 3},
    }
    return {**record, **overrides}


def publish_results(sandbox: Sandbox, seq: int, *records: dict[str, Any]) -> PublishedFile:
    return publish(sandbox.exports, sandbox.signer, seq, *records, stream="results", kind="results")


async def trail(sandbox: Sandbox) -> dict[str, tuple[str, datetime, str, int]]:
    rows = await query(
        sandbox,
        "SELECT job_id, function, enqueued_at, summary::text AS summary, export_seq"
        " FROM synced_job_results",
    )
    return {
        r["job_id"]: (r["function"], r["enqueued_at"], r["summary"], r["export_seq"]) for r in rows
    }


async def test_each_job_is_kept_once_with_its_times_and_summary_as_sent(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    publish_results(
        sandbox,
        1,
        job("a"),
        job("b", enqueued_at="2026-12-03T10:00:00", summary=None),  # no offset: local time
        job("c", enqueued_at="2026-12-03T12:00:00+02:00", summary=["x", 1.5, {"k": None}]),
    )
    publish_results(sandbox, 2, job("a", function="other"), job("d"))
    result = await importer.scan_once()
    assert (result.applied, result.quarantined) == (2, 0)
    ten = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    local_ten = datetime(2026, 12, 3, 10, 0).astimezone(UTC)  # as asyncpg reads it
    assert await trail(sandbox) == {
        "a": ("export_settings", ten, '{"records": 3}', 1),  # as it first arrived
        "b": ("export_settings", local_ten, "null", 1),
        "c": ("export_settings", ten, '["x", 1.5, {"k": null}]', 1),
        "d": ("export_settings", ten, '{"records": 3}', 2),
    }


async def test_a_genuine_file_the_database_refuses_is_quarantined_whole(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    published = publish_results(sandbox, 1, job("fine"), job("huge", tries=2**40))
    result = await importer.scan_once()
    assert result.quarantined == 1
    assert await quarantined(sandbox) == {published.path.name: "apply_failed"}
    assert await trail(sandbox) == {}
