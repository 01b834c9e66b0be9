"""Applying a ``results`` file: the audit trail of jobs the Response Network's workers ran.

Each record is one finished job, keyed by its job id; a record already held is left as it is, so a
file applied twice (or a job exported twice) changes nothing.
"""

from __future__ import annotations

import asyncio

import orjson
from pydantic import ValidationError
from sqlalchemy import text

from exchange.format import JobResultRecord
from exchange.reader import RejectedFile, RejectReason, VerifiedStream
from importer.daemon import json_rows
from importer.db import RequestSession
from importer.models import SyncedJobResult

_BATCH = 1000
_COLUMNS = {
    "job_id": "text",
    "function": "text",
    "queue": "text",
    "status": "text",
    "tries": "integer",
    "enqueued_at": "timestamptz",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "summary": "jsonb",
}
_CHOSEN, _SOURCE = json_rows.columns(_COLUMNS)
#: A block as one JSON text (``importer.daemon.json_rows``): building a multi-row ``VALUES``
#: through SQLAlchemy cost 0.4 s of the daemon's loop for a file of 600 results.
_INSERT = text(
    f"""
    WITH written AS (
        INSERT INTO {SyncedJobResult.__tablename__} ({", ".join(_COLUMNS)}, export_seq, applied_at)
        SELECT {_CHOSEN}, :seq, clock_timestamp() FROM {_SOURCE}
        ON CONFLICT (job_id) DO NOTHING
        RETURNING job_id
    )
    SELECT count(*) FROM written
    """  # noqa: S608 - identifiers are this module's, values are parameters
)


def _row(record: JobResultRecord) -> dict[str, object]:
    """A result as the statement's JSON."""
    row = record.model_dump()
    for name in ("enqueued_at", "started_at", "finished_at"):
        row[name] = json_rows.utc(getattr(record, name))
    return row


async def apply_results(session: RequestSession, export: VerifiedStream) -> int:
    """Insert the verified file's job results a batch at a time; return how many were new."""
    header = export.header
    written = 0
    while lines := await asyncio.to_thread(export.record_lines, _BATCH):
        first = export.records_read - len(lines) + 1
        rows: list[JobResultRecord] = []
        for number, line in enumerate(lines, start=first):
            try:
                rows.append(JobResultRecord.model_validate_json(line))
            except ValidationError as exc:
                raise RejectedFile(
                    RejectReason.INVALID_SCHEMA, f"record {number}: {exc.errors()[0]['msg']}"
                ) from exc
        params = {"rows": orjson.dumps([_row(r) for r in rows]).decode(), "seq": header.seq}
        written += int((await session.execute(_INSERT, params)).scalar_one())
    return written
