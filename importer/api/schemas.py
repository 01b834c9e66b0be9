"""What the Request API returns: never a password hash, never a tombstoned row. The synced
entities' read schemas are derived from their declaration (``exchange.entities``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, create_model

from exchange.entities import PROFILE_TYPE, SETTING, USER, Entity
from netsync.text import Text

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Offset = Annotated[int, Query(ge=0, le=2**31, description="rows to skip")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class _FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def read_schema(entity: Entity, name: str) -> type[BaseModel]:
    """What a read of an entity shows (``exchange.entities``): its id, every field but the
    secret ones (the password hash), its version and when it last changed."""
    fields: dict[str, Any] = {"id": (uuid.UUID, ...)}
    fields.update({f.name: (f.shown(), ...) for f in entity.fields if not f.secret})
    fields.update(version=(int, ...), changed_at=(datetime, ...))
    return create_model(name, __base__=_FromRow, **fields)


def page_of(item: type[BaseModel]) -> type[Page[Any]]:
    return Page[item]  # type: ignore[valid-type]


UserOut = read_schema(USER, "UserOut")
SettingOut = read_schema(SETTING, "SettingOut")
ProfileTypeOut = read_schema(PROFILE_TYPE, "ProfileTypeOut")


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Annotated[Text, Field(min_length=1, max_length=150)]
    password: Annotated[Text, Field(min_length=1, max_length=1024)]


class LoggedIn(BaseModel):
    authenticated: bool = True
    user_id: str
    username: str
    role: str
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth 2 token type, not a secret
    expires_in: int


class StreamStatus(BaseModel):
    stream: str
    #: The Response database's generation of the last applied file (0: the first).
    generation: int
    last_applied_seq: int
    files_applied: int
    last_applied_at: datetime
    last_exported_at: datetime
    #: Now minus the export time of the last applied file.
    lag_s: float


class GapOut(BaseModel):
    stream: str
    #: The Response database's generation the missing files were numbered in.
    generation: int
    first_seq: int
    last_seq: int
    missing: int
    first_seen_at: datetime
    age_s: float


class GenerationOut(BaseModel):
    """A generation of the Response database: each after the first follows a restore there."""

    generation: int
    first_seen_at: datetime
    first_file: str


class SyncStatus(BaseModel):
    #: The newest generation seen (0 before any restore of the Response database).
    generation: int
    #: Every generation after the first, newest first (at most ten).
    generations: list[GenerationOut]
    streams: list[StreamStatus]
    open_gaps: list[GapOut]
    missing_files: int
    oldest_gap_age_s: float
    files_quarantined: int
    files_ignored: int


class QuarantineEntry(_FromRow):
    id: int
    file_name: str
    stored_as: str | None
    reason: str
    detail: str
    size: int | None
    quarantined_at: datetime
