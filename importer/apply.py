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
arriving late is superseded as a whole (``importer.ledger``). Many ``changes`` files can
share one transaction and one statement per table (``apply_changes``): that is what makes a burst
of 10,000 files take seconds. A ``NOTIFY`` per file tells listeners the moment it commits.

Other kinds (snapshots, results) are applied one file per transaction by their own modules; the
daemon dispatches by the stream's kind (``exchange.format.kind_of_stream``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from exchange.format import ChangeRecord
from exchange.reader import ExportFile
from importer import gaps
from importer.db import RequestSession
from importer.ledger import claim
from importer.models import ImportLedger, SyncedProfileType, SyncedSetting, SyncedUser

APPLIED_CHANNEL = "netsync_applied"
_NOTIFY_EVENT_IDS = 100


@dataclass(frozen=True)
class ApplyResult:
    duplicate: bool
    changes: int
    #: Set when another file holds this one's place in the ledger (``importer.ledger``).
    conflict: str | None = None
    #: Of an older generation than one already seen: nothing applied (``importer.ledger``).
    superseded: bool = False
    #: A newer generation of the Response database, first seen with this batch.
    began: int | None = None


#: Per entity: its table and the columns its data fills (NULL / false on a tombstone).
_TABLES: dict[str, tuple[type[SyncedUser | SyncedSetting | SyncedProfileType], tuple[str, ...]]] = {
    "user": (
        SyncedUser,
        ("username", "email", "password_hash", "role", "is_active", "profile_type_id"),
    ),
    "setting": (SyncedSetting, ("key", "value", "description")),
    "profile_type": (SyncedProfileType, ("name", "description", "permissions")),
}
_BOOLEAN_COLUMNS = {"is_active"}
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


def _row(
    record: ChangeRecord,
    columns: tuple[str, ...],
    changes_seq: int | None,
    generation: int,
    now: datetime,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": record.entity_id,
        "generation": generation,
        "version": record.version,
        "event_id": record.event_id,
        "changed_at": record.occurred_at,
        "applied_at": now,
        "deleted": record.op == "delete",
        "last_changes_seq": changes_seq,
    }
    data = record.data if record.op == "upsert" else None
    for column in columns:
        # attributes, not model_dump(): this runs once per change and dominates a big burst
        default = False if column in _BOOLEAN_COLUMNS else None
        row[column] = getattr(data, column, default) if data is not None else default
    return row


async def _upsert(session: RequestSession, items: Sequence[_Item]) -> dict[int | None, int]:
    """Upsert the latest state of each entity; return how many rows each file seq wrote."""
    latest = _latest_per_entity(items)
    now = datetime.now(UTC)
    written: dict[int | None, int] = {}
    for entity, (table, columns) in _TABLES.items():
        chosen = [item for (e, _), item in latest.items() if e == entity]
        if not chosen:
            continue
        rows = [_row(r, columns, s, g, now) for r, s, g in chosen]
        base = insert(table)
        excluded = base.excluded
        updated = (
            "generation",
            "version",
            "event_id",
            "changed_at",
            "applied_at",
            "deleted",
            "last_changes_seq",
            *columns,
        )
        stmt = base.on_conflict_do_update(
            index_elements=[table.id],
            set_={col: excluded[col] for col in updated},
            where=tuple_(table.generation, table.version)
            < tuple_(excluded.generation, excluded.version),
        ).returning(table.id)
        # executemany: SQLAlchemy sends it as multi-row INSERTs ("insertmanyvalues")
        conn = await session.connection()
        ids = set((await conn.execute(stmt, rows)).scalars().all())
        for record, seq, _ in chosen:
            if record.entity_id in ids:
                written[seq] = written.get(seq, 0) + 1
    return written


async def _notify(
    session: RequestSession, exports: Sequence[ExportFile], counts: dict[int, int]
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
    await session.execute(
        text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p"),
        {"channel": APPLIED_CHANNEL, "payloads": payloads},
    )


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
    found = await claim(session, exports)
    fresh = [e for e in exports if e.header.seq in found.claimed]
    counts: dict[int, int] = {}
    if fresh:
        generation = fresh[0].header.generation  # all claimed files are of the newest one
        if generation > locked.generation:
            since = min(e.header.since_seq for e in fresh)
            locked = await gaps.enter_generation(session, stream, generation, since)
        marks = await gaps.snapshot_marks(session)
        items = [
            (r, e.header.seq, generation)
            for e in fresh
            for r in e.records
            if e.header.place > marks.get(r.entity, (0, 0))  # else a snapshot already covers it
        ]
        written = await _upsert(session, items)
        counts = {seq: n for seq, n in written.items() if seq is not None}
        if counts:
            conn = await session.connection()
            await conn.execute(
                update(ImportLedger)
                .where(
                    ImportLedger.stream == stream,
                    ImportLedger.generation == generation,
                    ImportLedger.seq == bindparam("b_seq"),
                )
                .values(applied_changes=bindparam("b_changes")),
                [{"b_seq": seq, "b_changes": n} for seq, n in counts.items()],
            )
        await gaps.record_applied(session, stream, locked, found.claimed)
        await _notify(session, fresh, counts)
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
