"""Applying a ``results`` file: the audit trail of jobs the Response Network's workers ran.

Each record is one finished job, keyed by its job id; a record already held is left as it is, so a
file applied twice (or a job exported twice) changes nothing.
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert

from exchange.format import JobResultRecord
from exchange.reader import RejectedFile, RejectReason, VerifiedStream
from importer.db import RequestSession
from importer.models import SyncedJobResult

_BATCH = 1000


async def apply_results(session: RequestSession, export: VerifiedStream) -> int:
    """Insert the verified file's job results a batch at a time; return how many were new."""
    header = export.header
    written = 0
    while lines := await asyncio.to_thread(export.record_lines, _BATCH):
        first = export.records_read - len(lines) + 1
        rows: list[dict[str, object]] = []
        for number, line in enumerate(lines, start=first):
            try:
                record = JobResultRecord.model_validate_json(line)
            except ValidationError as exc:
                raise RejectedFile(
                    RejectReason.INVALID_SCHEMA, f"record {number}: {exc.errors()[0]['msg']}"
                ) from exc
            rows.append(
                {
                    **record.model_dump(),
                    "export_seq": header.seq,
                    "applied_at": func.clock_timestamp(),
                }
            )
        stmt = (
            insert(SyncedJobResult)
            .values(rows)
            .on_conflict_do_nothing(index_elements=[SyncedJobResult.job_id])
            .returning(SyncedJobResult.job_id)
        )
        written += len((await session.execute(stmt)).all())
    return written
