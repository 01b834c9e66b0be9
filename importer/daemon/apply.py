"""Applying verified export files to the Request database, exactly once.

Everything is written in the caller's transaction. The stream's row in ``sync_streams`` is locked
first, so transactions applying one stream take turns (two importers included); then the files
are claimed in the ledger (``ON CONFLICT DO NOTHING``: a file already there is a duplicate and
applies nothing); then the records of the claimed files are upserted, guarded by each entity's
version, so a replayed or late change never overwrites a newer one; a late file at or below the
mark of an applied snapshot of a record's entity type is superseded by it and skipped for that
type (it could only bring back what the snapshot removed). The guard and the marks compare the
Response database's generation first (``jobs.numbering``): after a restore there, its new
generation's changes win over versions the restore undid, and a file of an older generation
arriving late is superseded as a whole (``importer.daemon.ledger``). Many ``changes`` files can
share one transaction and one statement per table (``apply_changes``): that is what makes a burst
of 10,000 files take seconds. A ``NOTIFY`` per file tells listeners the moment it commits.

Other kinds (snapshots, results) are applied one file per transaction by their own modules; the
daemon dispatches by the stream's kind (``exchange.format.kind_of_stream``).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import TextClause, text

from exchange.entities import ENTITIES, Entity
from exchange.format import ChangeRecord
from exchange.reader import ExportFile
from importer.daemon import gaps, json_rows
from importer.daemon.entities import BOOKKEEPING
from importer.daemon.ledger import claim
from importer.daemon.standing import standing
from importer.db import RequestSession
from importer.models import ImportLedger

APPLIED_CHANNEL = "netsync_applied"
_NOTIFY_EVENT_IDS = 100


@dataclass(frozen=True)
class ApplyResult:
    duplicate: bool
    changes: int
    #: Set when another file holds this one's place in the ledger (``importer.daemon.ledger``).
    conflict: str | None = None
    #: Of an older generation than one already seen: nothing applied (``importer.daemon.ledger``).
    superseded: bool = False
    #: A newer generation of the Response database, first seen with this batch.
    began: int | None = None


_Key = tuple[str, uuid.UUID]
#: A record, the ``changes`` file it came from (None: a snapshot) and that file's generation.
_Item = tuple[ChangeRecord, int | None, int]


def _latest_per_entity(items: Sequence[_Item]) -> dict[_Key, _Item]:
    """One statement cannot touch a row twice: keep each entity's newest state only."""
    latest: dict[_Key, _Item] = {}
    for item in items:
        record, _, generation = item
        key = (record.entity, record.entity_id)
        held = latest.get(key)
        if held is None or (held[2], held[0].version) < (generation, record.version):
            latest[key] = item
    return latest


def _upsert_sql(entity: Entity) -> str:
    """One statement for a batch of an entity's rows, given as one JSON text
    (``importer.daemon.json_rows``). The version guard decides per row; what comes back is how
    many rows each file wrote, not every id."""
    columns = {**BOOKKEEPING, **entity.sql_columns}
    names = ", ".join(columns)
    chosen, source = json_rows.columns(columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in [*columns, "applied_at"] if c != "id")
    return f"""
        WITH written AS (
            INSERT INTO {entity.replica} AS t ({names}, applied_at)
            SELECT {chosen}, :applied_at FROM {source}
            ON CONFLICT (id) DO UPDATE SET {updates}
            WHERE (t.generation, t.version) < (excluded.generation, excluded.version)
            RETURNING t.last_changes_seq
        )
        SELECT last_changes_seq, count(*) FROM written GROUP BY last_changes_seq
    """  # noqa: S608 - identifiers come from exchange.entities, values are parameters


@functools.cache
def _upsert_statement(entity: Entity) -> TextClause:
    return text(_upsert_sql(entity))


def _rows(entity: Entity, chosen: Sequence[_Item]) -> bytes:
    """The rows of ``chosen`` as the statement's JSON."""
    columns = list(entity.sql_columns)
    empty = {column: entity.empty(column) for column in columns}
    rows: list[dict[str, Any]] = []
    for record, seq, generation in chosen:
        row: dict[str, Any] = {
            "id": record.entity_id,
            "generation": generation,
            "version": record.version,
            "event_id": record.event_id,
            "changed_at": json_rows.utc(record.occurred_at),
            "deleted": record.op == "delete",
            "last_changes_seq": seq,
        }
        data = record.data if record.op == "upsert" else None
        # attributes, not model_dump(): this runs once per change and dominates a big burst
        for column in columns:
            row[column] = empty[column] if data is None else getattr(data, column, empty[column])
        rows.append(row)
    return orjson.dumps(rows)


async def _upsert(session: RequestSession, items: Sequence[_Item]) -> dict[int | None, int]:
    """Upsert the latest state of each entity; return how many rows each file seq wrote."""
    by_entity: dict[str, list[_Item]] = {}
    for (name, _), item in _latest_per_entity(items).items():
        by_entity.setdefault(name, []).append(item)
    now = datetime.now(UTC)
    written: dict[int | None, int] = {}
    for name, entity in ENTITIES.items():  # always in this order: locks taken in one order
        if not (chosen := by_entity.get(name)):
            continue
        params = {"rows": _rows(entity, chosen).decode(), "applied_at": now}
        for seq, n in (await session.execute(_upsert_statement(entity), params)).all():
            written[seq] = written.get(seq, 0) + n
    return written


#: The applying transaction's last statement: the ledger's change counts, the stream's
#: high-water mark and a ``NOTIFY`` per file, in one round trip.
_FINISH = text(
    f"""
    WITH counted AS (
        UPDATE {ImportLedger.__tablename__} AS l SET applied_changes = c.n
        FROM unnest(CAST(:count_seqs AS bigint[]), CAST(:counts AS integer[])) AS c(seq, n)
        WHERE l.stream = :stream AND l.generation = :generation AND l.seq = c.seq
    ), raised AS ({gaps.raise_high_sql()})
    SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p
    """  # noqa: S608 - table names from the models, values are parameters
)


async def _finish(
    session: RequestSession,
    stream: str,
    generation: int,
    high: int,
    exports: Sequence[ExportFile],
    counts: dict[int, int],
) -> None:
    payloads = [
        orjson.dumps(
            {
                "stream": e.header.stream,
                "seq": e.header.seq,
                "changes": counts.get(e.header.seq, 0),
                "events": [str(r.event_id) for r in e.records[:_NOTIFY_EVENT_IDS]],
            }
        ).decode()
        for e in exports
    ]
    params = {
        "stream": stream,
        "generation": generation,
        "high": high,
        "count_seqs": list(counts),
        "counts": list(counts.values()),
        "channel": APPLIED_CHANNEL,
        "payloads": payloads,
    }
    await session.execute(_FINISH, params)


async def apply_changes(
    session: RequestSession, exports: Sequence[ExportFile]
) -> dict[int, ApplyResult]:
    """Apply ``changes`` files of one stream in the caller's transaction; result per seq."""
    if not exports:
        return {}
    stream = exports[0].header.stream
    if any(e.header.kind != "changes" or e.header.stream != stream for e in exports):
        raise ValueError("apply_changes takes changes files of a single stream")
    locked = await gaps.lock_stream(session, stream)
    read = await standing(session, stream)
    found = await claim(session, exports, read)
    fresh = [e for e in exports if e.header.seq in found.claimed]
    counts: dict[int, int] = {}
    if fresh:
        generation = fresh[0].header.generation  # all claimed files are of the newest one
        if generation > locked.generation:
            since = min(e.header.since_seq for e in fresh)
            locked = await gaps.enter_generation(session, stream, generation, since)
        items = [
            (r, e.header.seq, generation)
            for e in fresh
            for r in e.records
            # else a snapshot already covers it
            if e.header.place > read.marks.get(r.entity, (0, 0))
        ]
        written = await _upsert(session, items)
        counts = {seq: n for seq, n in written.items() if seq is not None}
        high = await gaps.record_applied(session, stream, locked, found.claimed)
        await _finish(session, stream, generation, high, fresh, counts)
    return {
        e.header.seq: ApplyResult(
            duplicate=e.header.seq not in found.claimed,
            changes=counts.get(e.header.seq, 0),
            conflict=found.conflicts.get(e.header.seq),
            superseded=e.header.seq in found.superseded,
            began=found.began,
        )
        for e in exports
    }
