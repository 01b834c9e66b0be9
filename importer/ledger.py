"""The import ledger: one row per applied file, claimed in the transaction that applies it.

Every kind of file (changes, snapshots, results) is claimed here and only here, after its
signature held: the ledger's primary key ``(stream, seq)`` makes a second application
impossible, even by a second importer, which waits on the row and then finds it taken.

A file that finds its place taken is a duplicate only if it is the same file: the same
``file_id``, which the Response side allocates once per file (a ``changes`` file's rows are
fixed at allocation; a snapshot republished under its number after a crash may be read afresh:
that second reading is taken as a duplicate, and the next snapshot carries what it held). The
sweeper republishing an unpublished file, a resend, a second importer: each is the same file,
in new ciphertext (sealing is randomised, so its digest differs and is not compared). Two
*different* genuine files claiming one place (a restored Response database reusing sequence
numbers, a ``file_id`` reused under another sequence number) are a ledger conflict: never
silently archived, always quarantined with their own reason and alerted on.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import case, func, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert

from exchange.format import ExportHeader, FileName
from importer.db import RequestSession
from importer.models import ImportLedger, SyncStreamStats


class Claimable(Protocol):
    """A verified file, whatever its kind."""

    @property
    def name(self) -> FileName: ...
    @property
    def header(self) -> ExportHeader: ...
    @property
    def sha256(self) -> str: ...
    @property
    def key_id(self) -> str: ...


def _row(file: Claimable, now: datetime) -> dict[str, Any]:
    header = file.header
    return {
        "stream": header.stream,
        "seq": header.seq,
        "file_id": header.file_id,
        "file_name": file.name.name,
        "sha256": file.sha256,
        "key_id": file.key_id,
        "records": header.records,
        "applied_changes": 0,
        "exported_at": header.created_at,
        "applied_at": now,
    }


async def claim(
    session: RequestSession, files: Sequence[Claimable]
) -> tuple[set[int], dict[int, str]]:
    """Insert the files' ledger rows; return the seqs claimed now and the conflicts by seq
    (detail text). The files are of one stream; the rest are duplicates."""
    if not files:
        return set(), {}
    now = datetime.now(UTC)
    stmt = insert(ImportLedger).on_conflict_do_nothing().returning(ImportLedger.seq)
    conn = await session.connection()
    claimed = set((await conn.execute(stmt, [_row(f, now) for f in files])).scalars().all())
    if claimed:
        await _count(session, [f for f in files if f.header.seq in claimed], now)
    others = [f for f in files if f.header.seq not in claimed]
    return claimed, await _conflicts(session, others)


async def _count(session: RequestSession, files: Sequence[Claimable], now: datetime) -> None:
    """Keep the stream's counters in the claiming transaction: the sync status reads them, never
    the ledger (constant time however long the ledger grows)."""
    last = max(files, key=lambda f: f.header.seq).header
    stmt = insert(SyncStreamStats).values(
        stream=last.stream,
        files_applied=len(files),
        last_seq=last.seq,
        last_exported_at=last.created_at,
        last_applied_at=now,
    )
    old = SyncStreamStats.__table__.c
    newer = stmt.excluded.last_seq > old.last_seq
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[old.stream],
            set_={
                "files_applied": old.files_applied + stmt.excluded.files_applied,
                "last_applied_at": stmt.excluded.last_applied_at,
                "last_exported_at": case(
                    (newer, stmt.excluded.last_exported_at), else_=old.last_exported_at
                ),
                "last_seq": func.greatest(old.last_seq, stmt.excluded.last_seq),
            },
        )
    )


async def _conflicts(session: RequestSession, files: Sequence[Claimable]) -> dict[int, str]:
    if not files:
        return {}
    places = [(f.header.stream, f.header.seq) for f in files]
    ids = [f.header.file_id for f in files]
    rows = (
        await session.execute(
            select(ImportLedger.stream, ImportLedger.seq, ImportLedger.file_id).where(
                or_(
                    tuple_(ImportLedger.stream, ImportLedger.seq).in_(places),
                    ImportLedger.file_id.in_(ids),
                )
            )
        )
    ).all()
    by_place = {(r.stream, r.seq): r for r in rows}
    by_id: dict[uuid.UUID, Any] = {r.file_id: r for r in rows}
    conflicts: dict[int, str] = {}
    for file in files:
        header = file.header
        held = by_place.get((header.stream, header.seq))
        if held is None:
            other = by_id.get(header.file_id)
            where = f"{other.stream}/{other.seq}" if other is not None else "another place"
            conflicts[header.seq] = f"file id {header.file_id} is already held by {where}"
        elif held.file_id != header.file_id:
            conflicts[header.seq] = (
                f"{header.stream}/{header.seq} is held by file id {held.file_id},"
                f" this file is {header.file_id}"
            )
    return conflicts
