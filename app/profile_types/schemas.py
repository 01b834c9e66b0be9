"""What the profile types API accepts and returns.

The limits are those of the exchange contract (``exchange.format.ProfileTypeData``): whatever is
accepted here is accepted by the Request Network too.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.fields import Text

Name = Annotated[Text, Field(min_length=1, max_length=100, pattern=r"\S")]
Description = Annotated[Text, Field(max_length=2000)]
Permission = Annotated[
    Text,
    Field(
        min_length=1,
        max_length=100,
        pattern=r"^\S+$",
        description="A permission name without spaces, e.g. `users:read`.",
    ),
]
Permissions = Annotated[list[Permission], Field(max_length=200)]


def _unique(permissions: list[str]) -> list[str]:
    """Duplicates carry no meaning; keep the first of each, in the order given."""
    return list(dict.fromkeys(permissions))


class ProfileTypeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    description: Description | None = None
    permissions: Permissions = []

    @field_validator("permissions")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return _unique(value)


class ProfileTypeUpdate(BaseModel):
    """Only the fields present change; ``description: null`` clears the description."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    description: Description | None = None
    permissions: Permissions | None = None

    @field_validator("permissions")
    @classmethod
    def _dedupe(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _unique(value)

    @model_validator(mode="after")
    def _no_null_required(self) -> ProfileTypeUpdate:
        for field in ("name", "permissions"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class ProfileTypeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    permissions: list[str]
    version: int
    created_at: datetime
    updated_at: datetime


class ProfileTypeChanged(ProfileTypeOut):
    """The profile type after the change, and the sync job that carries it (``null`` when the
    request changed nothing, so nothing was sent)."""

    sync_job_id: str | None
