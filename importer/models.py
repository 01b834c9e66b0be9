"""What the Request Network holds: synced users, the import ledger, quarantined files."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from importer.db import RequestBase


class SyncedUser(RequestBase):
    """A user as last exported; a deletion is kept as a tombstone so an older upsert arriving
    late cannot bring the user back."""

    __tablename__ = "synced_users"
    __table_args__ = (Index("ix_synced_users_username_lower", text("lower(username)")),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    version: Mapped[int]
    username: Mapped[str | None] = mapped_column(String(150))
    email: Mapped[str | None] = mapped_column(String(320))
    password_hash: Mapped[str | None] = mapped_column(String(512))
    role: Mapped[str | None] = mapped_column(String(16))
    is_active: Mapped[bool] = mapped_column(default=False)
    profile_type_id: Mapped[uuid.UUID | None]
    deleted: Mapped[bool] = mapped_column(default=False)
    event_id: Mapped[uuid.UUID]
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ImportLedger(RequestBase):
    """One row per applied file, written in the transaction that applied it: exactly once."""

    __tablename__ = "import_ledger"

    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    file_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    file_name: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(16))
    records: Mapped[int]
    applied_changes: Mapped[int]
    exported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class QuarantinedFile(RequestBase):
    __tablename__ = "quarantined_files"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    file_name: Mapped[str] = mapped_column(String(255))
    stored_as: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(String(32), index=True)
    detail: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    quarantined_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


__all__ = ["ImportLedger", "QuarantinedFile", "RequestBase", "SyncedUser"]
