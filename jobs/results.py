"""``export_results``: the results of finished jobs, sent to the Request Network as an audit trail.

arq keeps each result in Redis for ``job_result_ttl_s``; every run collects the results of our
queues (never another application's) and records the new ones in ``exported_results``, a small
outbox: new rows get the next ``results`` sequence number under the stream's row lock, then the
file is written from those rows. A result is therefore exported once, a crash between the two
steps republishes the same file, and Redis may forget a result as soon as its row exists.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from arq.connections import ArqRedis
from arq.jobs import DeserializationError, JobResult, deserialize_result
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert

from app.db import ResponseSession, ResponseSessionMaker
from app.outbox.models import ExportFile
from app.queue.serialization import deserialize
from app.scheduling.models import ExportedResult
from exchange.format import RESULTS_STREAM, generation_fields
from exchange.sealing import Recipients
from exchange.signing import Signer
from exchange.writer import publish_export
from jobs import numbering

RESULT_KEY_PREFIX = "arq:result:"
_SUMMARY_BYTES = 4096


def summarise(value: Any, success: bool) -> Any:
    """A job's result as the audit trail keeps it: JSON, a few KiB at most."""
    if not success:
        return {"error": repr(value)[:_SUMMARY_BYTES]}
    try:
        data = orjson.dumps(value)
    except TypeError:
        return {"repr": repr(value)[:_SUMMARY_BYTES]}
    if len(data) > _SUMMARY_BYTES:
        return {"truncated": data[:_SUMMARY_BYTES].decode(errors="ignore")}
    return orjson.loads(data)


def record_of(job_id: str, result: JobResult) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "function": result.function,
        "queue": result.queue_name,
        "status": "complete" if result.success else "failed",
        "tries": result.job_try,
        "enqueued_at": result.enqueue_time.astimezone(UTC).isoformat(),
        "started_at": result.start_time.astimezone(UTC).isoformat(),
        "finished_at": result.finish_time.astimezone(UTC).isoformat(),
        "summary": summarise(result.result, result.success),
    }


async def collect(redis: ArqRedis, queues: set[str]) -> list[dict[str, Any]]:
    """Every result in Redis that one of ``queues`` produced (SCAN: never blocks Redis)."""
    records: list[dict[str, Any]] = []
    keys: list[bytes] = []

    async def read() -> None:
        for key, raw in zip(keys, await redis.mget(keys), strict=True):
            if raw is None:
                continue
            try:
                result = deserialize_result(raw, deserializer=deserialize)
            except DeserializationError:
                continue  # not arq's JSON: another application's key, not ours to read
            if result.queue_name in queues:
                records.append(record_of(key.decode()[len(RESULT_KEY_PREFIX) :], result))
        keys.clear()

    async for key in redis.scan_iter(match=f"{RESULT_KEY_PREFIX}*", count=1000):
        keys.append(key)
        if len(keys) >= 500:
            await read()
    if keys:
        await read()
    return records


async def _allocate(session: ResponseSession, records: list[dict[str, Any]]) -> int | None:
    """Record new results and give the pending ones a file number; ``None`` if nothing is new."""
    for start in range(0, len(records), 2000):
        await session.execute(
            insert(ExportedResult)
            .values(
                [
                    {
                        "job_id": r["job_id"],
                        "finished_at": datetime.fromisoformat(r["finished_at"]),
                        "record": r,
                    }
                    for r in records[start : start + 2000]
                ]
            )
            .on_conflict_do_nothing(index_elements=[ExportedResult.job_id])
        )
    stream = await numbering.lock_stream(session, RESULTS_STREAM)
    leftover = await numbering.unpublished(session, RESULTS_STREAM)
    if leftover is not None:
        return leftover.seq
    pending = (
        await session.scalars(
            select(ExportedResult.job_id).where(ExportedResult.export_seq.is_(None)).limit(10_000)
        )
    ).all()
    if not pending:
        return None
    file = numbering.number_file(session, stream, records=len(pending))
    await session.flush()
    await session.execute(
        update(ExportedResult).where(ExportedResult.job_id.in_(pending)).values(export_seq=file.seq)
    )
    return file.seq


async def export_results(
    redis: ArqRedis,
    sessions: ResponseSessionMaker,
    exports_dir: Path,
    signer: Signer,
    queues: set[str],
    *,
    recipients: Recipients | None,
    generations: numbering.GenerationWatch | None = None,
) -> dict[str, Any]:
    records = await collect(redis, queues)
    if generations is not None:
        await generations.ensure()
    async with sessions() as session, session.begin():
        seq = await _allocate(session, records)
    if seq is None:
        return {"results": 0}
    async with sessions() as session, session.begin():
        file = await session.get(ExportFile, (RESULTS_STREAM, seq), with_for_update=True)
        assert file is not None
        if file.published_at is not None:  # another run published it meanwhile
            return {"results": 0}
        rows = (
            await session.scalars(
                select(ExportedResult.record)
                .where(ExportedResult.export_seq == seq)
                .order_by(ExportedResult.finished_at, ExportedResult.job_id)
            )
        ).all()
        published = await asyncio.to_thread(
            publish_export,
            exports_dir,
            signer,
            recipients=recipients,
            stream=RESULTS_STREAM,
            seq=seq,
            kind="results",
            file_id=file.file_id,
            created_at=file.created_at,
            records=rows,
            header=generation_fields(file.generation, file.since_seq),
        )
        if generations is not None:
            await asyncio.to_thread(generations.mark, RESULTS_STREAM, file.generation, seq)
        file.published_at = datetime.now(UTC)
        file.sha256 = published.sha256
        file.records = published.records
    return {"results": published.records, "file": published.name, "seen": len(records)}
