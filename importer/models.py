"""What the Request Network holds: synced entities, the import ledger, quarantined files.

Every synced table keeps the entity's ``generation`` and ``version`` (together the guard against
older changes: a newer generation of the Response database outranks any version of an older
one), a ``deleted`` flag (a tombstone, so that an older upsert arriving late cannot bring an
entity back) and ``last_changes_seq``: the ``changes`` file that last wrote the row, or NULL when
a snapshot did. Snapshots use it to tell entities they may remove from ones changed after them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from importer.db import RequestBase


class _Synced:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    version: Mapped[int]
    deleted: Mapped[bool] = mapped_column(default=False)
    event_id: Mapped[uuid.UUID]
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_changes_seq: Mapped[int | None] = mapped_column(BigInteger)


class SyncedUser(_Synced, RequestBase):
    __tablename__ = "synced_users"
    __table_args__ = (Index("ix_synced_users_username_lower", text("lower(username)")),)

    username: Mapped[str | None] = mapped_column(String(150))
    email: Mapped[str | None] = mapped_column(String(320))
    password_hash: Mapped[str | None] = mapped_column(String(512))
    role: Mapped[str | None] = mapped_column(String(16))
    is_active: Mapped[bool] = mapped_column(default=False)
    profile_type_id: Mapped[uuid.UUID | None]


class SyncedSetting(_Synced, RequestBase):
    __tablename__ = "synced_settings"
    __table_args__ = (Index("ix_synced_settings_key", "key"),)

    key: Mapped[str | None] = mapped_column(String(200))
    value: Mapped[Any] = mapped_column(JSONB, nullable=True)
    description: Mapped[str | None] = mapped_column(Text)


class SyncedProfileType(_Synced, RequestBase):
    __tablename__ = "synced_profile_types"

    name: Mapped[str | None] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    permissions: Mapped[list[str] | None] = mapped_column(JSONB)


class ImportLedger(RequestBase):
    """One row per applied file, written in the transaction that applied it: exactly once."""

    __tablename__ = "import_ledger"

    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: A new generation numbers on from the restored database's last file: numbers may recur.
    generation: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, default=0, server_default="0"
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    file_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    file_name: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(16))
    records: Mapped[int]
    applied_changes: Mapped[int]
    exported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SyncStreamStats(RequestBase):
    """Per stream: files applied, the last one and when; updated by the claim that applies them
    (``importer.daemon.ledger.claim``), so the sync status never scans the ledger. ``pruned_*``: the
    ledger holds no row at or below this place any more (``importer.daemon.ledger.prune``)."""

    __tablename__ = "sync_stream_stats"

    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    files_applied: Mapped[int] = mapped_column(BigInteger)
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_exported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    pruned_generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    pruned_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    pruned_exported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class QuarantinedFile(RequestBase):
    """A file the importer refused (moved to the quarantine directory, with a sidecar), or a name
    that is not an export name (left where it is, recorded once per name: ``stored_as`` NULL)."""

    __tablename__ = "quarantined_files"
    __table_args__ = (
        Index(
            "uq_quarantined_files_ignored_name",
            "file_name",
            unique=True,
            postgresql_where=text("reason = 'not_an_export_name'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    file_name: Mapped[str] = mapped_column(String(255))
    stored_as: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(String(32), index=True)
    detail: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    quarantined_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class SyncedJobResult(RequestBase):
    """The audit trail: one finished job of the Response Network's workers (``results`` files)."""

    __tablename__ = "synced_job_results"

    job_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    function: Mapped[str] = mapped_column(String(200), index=True)
    queue: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    tries: Mapped[int]
    enqueued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    summary: Mapped[Any] = mapped_column(JSONB, nullable=True)
    export_seq: Mapped[int] = mapped_column(BigInteger)
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SyncStream(RequestBase):
    """Per ``changes`` stream: the highest sequence number applied or healed by a snapshot.

    Its row is also the stream's lock: every transaction that applies files of a stream locks it
    first, so gap bookkeeping never races and two importers take turns per stream. Its numbers
    and gaps are those of ``generation``: the stream's first file of a newer one resets them.
    """

    __tablename__ = "sync_streams"

    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    high_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    healed_through: Mapped[int] = mapped_column(BigInteger, default=0)


class SnapshotMark(RequestBase):
    """Per entity type: the highest ``changes_seq`` mark of its snapshots applied here.

    A snapshot of one entity type reflects every change of that type in ``changes`` files up to
    its mark, and nothing about the other types. So a ``changes`` record at or below its type's
    mark is superseded (applying it late could only bring back what the snapshot removed), and a
    gap is healed only up to the lowest mark of all types: a missing file may hold any of them.
    """

    __tablename__ = "snapshot_marks"

    entity: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: The mark is (generation, changes_seq): a mark of a newer generation covers all older ones.
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    changes_seq: Mapped[int] = mapped_column(BigInteger)
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SyncGeneration(RequestBase):
    """A generation of the Response database seen here; the newest is the one applied, and a
    file of an older one is superseded (``importer.daemon.ledger``)."""

    __tablename__ = "sync_generations"

    generation: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    first_file: Mapped[str] = mapped_column(String(64))


class SyncGap(RequestBase):
    """A run of sequence numbers not (yet) applied, below one that was: open until every file of
    the run arrives or a snapshot covers it. Closed gaps are deleted (and logged)."""

    __tablename__ = "sync_gaps"

    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: The generation the gap opened in: numbers of a newer one may cover the same range.
    generation: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, default=0, server_default="0"
    )
    first_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


__all__ = [
    "ImportLedger",
    "QuarantinedFile",
    "RequestBase",
    "SnapshotMark",
    "SyncGap",
    "SyncGeneration",
    "SyncStream",
    "SyncStreamStats",
    "SyncedJobResult",
    "SyncedProfileType",
    "SyncedSetting",
    "SyncedUser",
]


class SignInThrottle(RequestBase):
    """One fixed-window counter of sign-in attempts (``netsync.throttle.PostgresStorage``)."""

    __tablename__ = "sign_in_throttle"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    count: Mapped[int]
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
