"""Users of the Response Network: the source of every password hash the Request side holds."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Index, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import ResponseBase
from app.profile_types.models import ProfileType


class User(ResponseBase):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role in ('admin', 'user')", name="role"),
        Index("uq_users_username_lower", text("lower(username)"), unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    username: Mapped[str] = mapped_column(String(150))
    email: Mapped[str | None] = mapped_column(String(320))
    password_hash: Mapped[str] = mapped_column(String(512))
    role: Mapped[str] = mapped_column(String(16), default="user")
    is_active: Mapped[bool] = mapped_column(default=True)
    #: A profile type in use cannot be deleted (RESTRICT): the API answers 409.
    profile_type_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey(ProfileType.id, ondelete="RESTRICT"), index=True
    )
    #: Grows by one with every change the Request Network must learn about.
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    password_changed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    #: Grows by one with every password change: a bearer token carries the value it was issued
    #: with and dies when it is behind (a counter, so no clock skew between replicas matters).
    token_version: Mapped[int] = mapped_column(server_default="1", default=1)
