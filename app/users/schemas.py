"""What the users API accepts and returns; never a password or a hash on the way out."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

Username = Annotated[
    str,
    Field(
        min_length=3,
        max_length=150,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$",
        description="Letters, digits and _ . @ -, starting with a letter or digit.",
    ),
]
Password = Annotated[str, Field(min_length=1, max_length=1024)]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Username
    email: EmailStr | None = None
    password: Password
    role: Literal["admin", "user"] = "user"
    is_active: bool = True


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    username: str
    email: str | None
    role: str
    is_active: bool
    version: int
    created_at: datetime
    updated_at: datetime


class UserCreated(UserOut):
    sync_job_id: str


class ResetPassword(BaseModel):
    model_config = ConfigDict(extra="forbid")

    new_password: Password


class ChangeOwnPassword(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: Password
    new_password: Password


class SyncAccepted(BaseModel):
    """The change is committed; ``sync_job_id`` follows it to the Request Network."""

    success: Literal[True] = True
    sync_job_id: str
    version: int
