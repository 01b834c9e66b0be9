"""Applying one verified export file to the Request database, exactly once.

The ledger row and the changes are written in the caller's transaction. The ledger insert comes
first: a second importer applying the same file blocks on the ledger's primary key until the
first commits, then finds the row and applies nothing. Each change is an upsert guarded by the
entity's version, so a replayed or late change never overwrites a newer one. A ``NOTIFY`` in the
same transaction tells listeners (the latency benchmark, the Request API) the moment it commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert

from exchange.format import ChangeRecord
from exchange.reader import ExportFile
from importer.db import RequestSession
from importer.models import ImportLedger, SyncedProfileType, SyncedSetting, SyncedUser
from importer.snapshots import apply_snapshot_export

APPLIED_CHANNEL = "netsync_applied"
_NOTIFY_EVENT_IDS = 100


@dataclass(frozen=True)
class ApplyResult:
    duplicate: bool
    changes: int


def _latest_per_entity(records: list[ChangeRecord]) -> list[ChangeRecord]:
    latest: dict[tuple[str, object], ChangeRecord] = {}
    for record in records:
        key = (record.entity, record.entity_id)
        if key not in latest or latest[key].version < record.version:
            latest[key] = record
    return list(latest.values())


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


def _row(record: ChangeRecord, columns: tuple[str, ...], changes_seq: int | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": record.entity_id,
        "version": record.version,
        "event_id": record.event_id,
        "changed_at": record.occurred_at,
        "applied_at": func.clock_timestamp(),
        "deleted": record.op == "delete",
        "last_changes_seq": changes_seq,
    }
    data = record.data.model_dump(mode="json") if record.op == "upsert" and record.data else {}
    for column in columns:
        row[column] = data.get(column, False if column in _BOOLEAN_COLUMNS else None)
    return row


async def upsert_records(
    session: RequestSession, records: list[ChangeRecord], *, changes_seq: int | None
) -> int:
    """Write the latest state of each entity unless the database already holds a newer one.

    ``changes_seq`` is the ``changes`` file the records come from (``None`` for a snapshot).
    Returns how many rows were inserted or updated.
    """
    written = 0
    latest = _latest_per_entity(records)
    for entity, (table, columns) in _TABLES.items():
        rows = [_row(r, columns, changes_seq) for r in latest if r.entity == entity]
        if not rows:
            continue
        base = insert(table).values(rows)
        excluded = base.excluded
        updated = (
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
            where=table.version < excluded.version,
        ).returning(table.id)
        written += len((await session.execute(stmt)).all())
    return written


async def already_applied(session: RequestSession, export: ExportFile) -> bool:
    found = await session.scalar(
        select(ImportLedger.seq).where(
            ImportLedger.stream == export.header.stream, ImportLedger.seq == export.header.seq
        )
    )
    return found is not None


async def apply_export(session: RequestSession, export: ExportFile) -> ApplyResult:
    header = export.header
    if header.kind == "snapshot":
        done = await apply_snapshot_export(session, export)
        return ApplyResult(duplicate=done.duplicate, changes=done.written + done.removed)
    if header.kind != "changes":
        raise NotImplementedError(f"export kind {header.kind!r}")
    claimed = await session.scalar(
        insert(ImportLedger)
        .values(
            stream=header.stream,
            seq=header.seq,
            file_id=header.file_id,
            file_name=export.name.name,
            sha256=export.sha256,
            key_id=export.key_id,
            records=header.records,
            applied_changes=0,
            exported_at=header.created_at,
            applied_at=func.clock_timestamp(),
        )
        .on_conflict_do_nothing()
        .returning(ImportLedger.seq)
    )
    if claimed is None:
        return ApplyResult(duplicate=True, changes=0)
    changes = await upsert_records(session, export.records, changes_seq=header.seq)
    await session.execute(
        update(ImportLedger)
        .where(ImportLedger.stream == header.stream, ImportLedger.seq == header.seq)
        .values(applied_changes=changes)
    )
    events = [str(r.event_id) for r in export.records[:_NOTIFY_EVENT_IDS]]
    payload = {"stream": header.stream, "seq": header.seq, "changes": changes, "events": events}
    await session.execute(select(func.pg_notify(APPLIED_CHANNEL, orjson.dumps(payload).decode())))
    return ApplyResult(duplicate=False, changes=changes)
