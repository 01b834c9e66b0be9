"""The housekeeping jobs: monitoring, Redis clean-up, daily statistics and retention.

Each is a plain async function of explicit arguments; ``jobs.periodic`` wires them to the schedule
and the tick guard.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert

from app.db import ResponseSessionMaker
from app.outbox.models import ExportFile, OutboxEvent
from app.scheduling.models import CronTick, DailyStats, ExportedResult, SystemSample
from exchange.format import SNAPSHOT_STREAMS, STAGING_DIRNAME, parse_file_name

log = logging.getLogger(__name__)

HEALTH_SUFFIX = ":health-check"


@dataclass(frozen=True)
class Queues:
    sync: str
    bulk: str

    @property
    def names(self) -> set[str]:
        return {self.sync, self.bulk}


def _dir_size(path: Path) -> tuple[int, int]:
    """Files and bytes directly in ``path`` and its staging directory (not the archive)."""
    files = size = 0
    for directory in (path, path / STAGING_DIRNAME):
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        files += 1
                        size += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return files, size


async def system_monitoring(
    redis: ArqRedis,
    sessions: ResponseSessionMaker,
    exports_dir: Path,
    queues: Queues,
    *,
    stale_after_s: float,
) -> dict[str, Any]:
    """Take and store one reading; warn when an export or the outbox is older than it should be."""
    now = datetime.now(UTC)
    depths = {q: int(await redis.zcard(q)) for q in sorted(queues.names)}
    heartbeats: dict[str, Any] = {}
    for q in sorted(queues.names):
        info = await redis.get(q + HEALTH_SUFFIX)
        heartbeats[q] = info.decode(errors="replace") if info else None
    files, size = await asyncio.to_thread(_dir_size, exports_dir)
    async with sessions() as session, session.begin():
        backlog, oldest = (
            await session.execute(
                select(func.count(), func.min(OutboxEvent.created_at)).where(
                    OutboxEvent.export_seq.is_(None)
                )
            )
        ).one()
        last = dict(
            (
                await session.execute(
                    select(ExportFile.stream, func.max(ExportFile.published_at)).group_by(
                        ExportFile.stream
                    )
                )
            ).all()
        )
        ages = {s: round((now - t).total_seconds(), 3) for s, t in last.items() if t is not None}
        stale = sorted(
            s for s in SNAPSHOT_STREAMS.values() if ages.get(s, float("inf")) > stale_after_s
        )
        outbox_age = round((now - oldest).total_seconds(), 3) if oldest else 0.0
        data: dict[str, Any] = {
            "queue_depths": depths,
            "worker_heartbeats": heartbeats,
            "outbox_backlog": int(backlog),
            "outbox_oldest_pending_s": outbox_age,
            "exports_dir": {"files": files, "bytes": size},
            "last_export_age_s": ages,
            "stale_exports": stale,
        }
        is_stale = bool(stale) or outbox_age > stale_after_s
        session.add(SystemSample(stale=is_stale, data=data))
    if is_stale:
        log.warning("sync is stale", extra={"stale_exports": stale, "outbox_oldest_s": outbox_age})
    return {"stale": is_stale, **data}


async def cache_maintenance(redis: ArqRedis, queues: Queues) -> dict[str, int]:
    """Drop queue entries whose job no longer exists, in our queues only.

    A queue is a sorted set of job ids; the job itself is a separate key that expires. A job that
    expired before a worker took it (a deferred retry after a long outage, a crash mid-enqueue)
    leaves its id behind: arq skips it at pickup, but it inflates the queue depth operators read
    and stays forever. Every key touched is found by SCAN/ZSCAN of our own queue names; nothing
    outside them (another application's keys, our live jobs) is ever removed.
    """
    removed = scanned = 0
    for queue in sorted(queues.names):
        orphans: list[str] = []
        async for member, _score in redis.zscan_iter(queue, count=500):
            scanned += 1
            job_id = member.decode() if isinstance(member, bytes) else str(member)
            if not await redis.exists(job_key_prefix + job_id):
                orphans.append(job_id)
        for start in range(0, len(orphans), 500):
            # re-check under ZREM's atomicity is not needed: an id without a job never runs
            removed += int(await redis.zrem(queue, *orphans[start : start + 500]))
    if removed:
        log.info("removed orphaned queue entries", extra={"removed": removed})
    return {"scanned": scanned, "removed": removed}


async def daily_stats(sessions: ResponseSessionMaker, day: date, tz: Any) -> dict[str, Any]:
    """The sync statistics of ``day`` (midnight to midnight in the schedule's time zone)."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    end = start + timedelta(days=1)
    async with sessions() as session, session.begin():
        changes = await session.scalar(
            select(func.count()).where(
                OutboxEvent.created_at >= start,
                OutboxEvent.created_at < end,
                OutboxEvent.export_seq.is_not(None),
            )
        )
        files = dict(
            (
                await session.execute(
                    select(ExportFile.stream, func.count())
                    .where(ExportFile.published_at >= start, ExportFile.published_at < end)
                    .group_by(ExportFile.stream)
                )
            ).all()
        )
        ticks = dict(
            (
                await session.execute(
                    select(CronTick.status, func.count())
                    .where(CronTick.tick_at >= start, CronTick.tick_at < end)
                    .group_by(CronTick.status)
                )
            ).all()
        )
        data: dict[str, Any] = {
            "day": day.isoformat(),
            "changes_exported": int(changes or 0),
            "files_published": {k: int(v) for k, v in files.items()},
            "ticks": {k: int(v) for k, v in ticks.items()},
            "failures": int(ticks.get("failed", 0)),
        }
        stmt = insert(DailyStats).values(day=day, data=data, computed_at=func.now())
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[DailyStats.day],
                set_={"data": stmt.excluded.data, "computed_at": stmt.excluded.computed_at},
            )
        )
    return data


def _remove_old_files(exports_dir: Path, archive_dir: Path, cutoff: float) -> dict[str, int]:
    removed = {"archived": 0, "staging": 0, "snapshots": 0}
    for entry_dir, kind in ((archive_dir, "archived"), (exports_dir / STAGING_DIRNAME, "staging")):
        try:
            with os.scandir(entry_dir) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                        Path(entry.path).unlink(missing_ok=True)
                        removed[kind] += 1
        except FileNotFoundError:
            continue
    # Unapplied snapshots past retention are superseded by a newer one of the same stream; change
    # files are never removed unapplied: losing one would lose a change.
    newest: dict[str, int] = {}
    old: list[tuple[str, int, str]] = []
    with os.scandir(exports_dir) as entries:
        for entry in entries:
            name = parse_file_name(entry.name)
            if name is None or name.stream not in SNAPSHOT_STREAMS.values():
                continue
            newest[name.stream] = max(newest.get(name.stream, 0), name.seq)
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                old.append((name.stream, name.seq, entry.path))
    for stream, seq, path in old:
        if seq < newest[stream]:
            Path(path).unlink(missing_ok=True)
            removed["snapshots"] += 1
    return removed


#: Outbox rows (and their files' rows) are deleted this many at a time, each batch its own short
#: transaction: a prune of millions of rows never holds a lock for long or blocks the relay.
PRUNE_BATCH = 5000

#: One batch of published outbox rows whose file was published before the cutoff. The newest
#: file of the stream keeps its rows, whatever its age (the latest state of a quiet stream).
_PRUNE_OUTBOX = text(
    """
    DELETE FROM outbox_events WHERE id IN (
        SELECT o.id FROM outbox_events AS o
        JOIN export_files AS f ON f.stream = o.export_stream AND f.seq = o.export_seq
        WHERE f.published_at < :cutoff
          AND f.seq < (SELECT last_seq FROM export_streams AS s WHERE s.stream = f.stream)
        ORDER BY o.id
        LIMIT :batch
    )
    """
)
#: Then the rows of those files, once no outbox row refers to them.
_PRUNE_FILES = text(
    """
    DELETE FROM export_files WHERE (stream, seq) IN (
        SELECT f.stream, f.seq FROM export_files AS f
        WHERE f.stream = 'changes' AND f.published_at < :cutoff
          AND f.seq < (SELECT last_seq FROM export_streams AS s WHERE s.stream = f.stream)
          AND NOT EXISTS (
              SELECT 1 FROM outbox_events AS o
              WHERE o.export_stream = f.stream AND o.export_seq = f.seq
          )
        LIMIT :batch
    )
    """
)


async def prune_outbox(
    sessions: ResponseSessionMaker, cutoff: datetime, batch: int = PRUNE_BATCH
) -> dict[str, int]:
    """Delete what a resend could still need only once it is older than the retention: the
    published outbox rows and their ``changes`` files' rows. Pending rows are never touched."""
    removed = {"outbox_events": 0, "export_files": 0}
    for table, statement in (("outbox_events", _PRUNE_OUTBOX), ("export_files", _PRUNE_FILES)):
        while True:
            async with sessions() as session, session.begin():
                result = await session.execute(statement, {"cutoff": cutoff, "batch": batch})
            count = int(result.rowcount)  # type: ignore[attr-defined]
            removed[table] += count
            if count < batch:
                break
    return removed


async def retention_cleanup(
    sessions: ResponseSessionMaker, exports_dir: Path, archive_dir: Path, days: int
) -> dict[str, int]:
    """Delete archived files, stale staging files and old snapshots, old bookkeeping rows, and
    the outbox rows a resend can no longer be asked for (``netsync export resend``)."""
    cutoff = datetime.now(UTC) - timedelta(days=days)
    removed = await asyncio.to_thread(
        _remove_old_files, exports_dir, archive_dir, time.time() - days * 86_400
    )
    async with sessions() as session, session.begin():
        for table, column in (
            (CronTick, CronTick.tick_at),
            (SystemSample, SystemSample.taken_at),
        ):
            result = await session.execute(delete(table).where(column < cutoff))
            removed[table.__tablename__] = int(result.rowcount)  # type: ignore[attr-defined]
        # a result stays in Redis up to the cron tombstones' two days: keep its row longer, or
        # the next export_results would send it again
        kept_from = min(cutoff, datetime.now(UTC) - timedelta(days=3))
        result = await session.execute(
            delete(ExportedResult).where(
                ExportedResult.finished_at < kept_from, ExportedResult.export_seq.is_not(None)
            )
        )
        removed["exported_results"] = int(result.rowcount)  # type: ignore[attr-defined]
    removed.update(await prune_outbox(sessions, cutoff))
    return removed
