"""What the users API accepts and returns; never a password or a hash on the way out."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator

from app.fields import Text

Username = Annotated[
    str,
    Field(
        min_length=3,
        max_length=150,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$",
        description="Letters, digits and _ . @ -, starting with a letter or digit.",
    ),
]
Password = Annotated[Text, Field(min_length=1, max_length=1024)]
Role = Literal["admin", "user"]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Username
    email: EmailStr | None = None
    password: Password
    role: Role = "user"
    is_active: bool = True
    profile_type_id: uuid.UUID | None = None


class UserUpdate(BaseModel):
    """Only the fields present change; ``email`` and ``profile_type_id`` may be ``null``.

    A user may change their own ``username`` and ``email``; ``role``, ``is_active`` and
    ``profile_type_id`` (which grants permissions) are for administrators, and nobody changes
    their own role or active flag.
    """

    model_config = ConfigDict(extra="forbid")

    username: Username | None = None
    email: EmailStr | None = None
    role: Role | None = None
    is_active: bool | None = None
    profile_type_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _no_null_required(self) -> UserUpdate:
        for field in ("username", "role", "is_active"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    username: str
    email: str | None
    role: str
    is_active: bool
    profile_type_id: uuid.UUID | None
    version: int
    created_at: datetime
    updated_at: datetime


class UserCreated(UserOut):
    sync_job_id: str


class UserChanged(UserOut):
    """The user after the change, and the sync job that carries it (``null`` when the request
    changed nothing, so nothing was sent)."""

    sync_job_id: str | None


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
