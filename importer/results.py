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
from exchange.reader import RejectReason
from exchange.streaming import StreamedExport, Verified
from importer.db import RequestSession
from importer.models import SyncedJobResult


async def apply_results_stream(
    session: RequestSession, export: StreamedExport
) -> tuple[int, Verified]:
    """Insert the file's job results; return how many were new and the file's verdict."""
    header = export.header
    if header.kind != "results":
        export.reject(RejectReason.INVALID_SCHEMA, f"{header.stream} files hold job results")
    rows: list[dict[str, object]] = []
    while lines := await asyncio.to_thread(export.record_lines, 1000):
        first = export.records_read - len(lines) + 1
        for number, line in enumerate(lines, start=first):
            try:
                record = JobResultRecord.model_validate_json(line)
            except ValidationError as exc:
                export.reject(
                    RejectReason.INVALID_SCHEMA, f"record {number}: {exc.errors()[0]['msg']}"
                )
            rows.append(
                {
                    **record.model_dump(),
                    "export_seq": header.seq,
                    "applied_at": func.clock_timestamp(),
                }
            )
    verified = await asyncio.to_thread(export.finish)
    written = 0
    for start in range(0, len(rows), 1000):
        stmt = (
            insert(SyncedJobResult)
            .values(rows[start : start + 1000])
            .on_conflict_do_nothing(index_elements=[SyncedJobResult.job_id])
            .returning(SyncedJobResult.job_id)
        )
        written += len((await session.execute(stmt)).all())
    return written, verified
