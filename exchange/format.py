"""File names and the typed shape of an export file's header and records.

An export file is JSON Lines: one header object, one object per record, and one signature trailer.
Files are immutable once published; a change is never appended to an existing file. Every file
carries its stream's sequence number, every record its event id and its entity's version, so the
reader can order files, detect gaps, ignore replays and never let an older value win.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT_NAME = "netsync-export"
FORMAT_VERSION = 1
FILE_SUFFIX = ".jsonl"
SEQ_DIGITS = 12
STAGING_DIRNAME = ".staging"

# Stream names are short lowercase words; sequence numbers are zero-padded so that a plain sort
# of the directory listing is also the sequence order.
_NAME_RE = re.compile(r"^(?P<stream>[a-z][a-z_]{0,31})-(?P<seq>[0-9]{12})\.jsonl$")

#: The stream of incremental changes taken from the Response Network's outbox.
CHANGES_STREAM = "changes"


@dataclass(frozen=True, order=True)
class FileName:
    """A parsed export file name: ``<stream>-<seq>.jsonl``."""

    stream: str
    seq: int

    @property
    def name(self) -> str:
        return f"{self.stream}-{self.seq:0{SEQ_DIGITS}d}{FILE_SUFFIX}"


def file_name(stream: str, seq: int) -> str:
    """The final name of a file; raises ``ValueError`` for a stream or seq we would not accept."""
    name = FileName(stream, seq).name
    if parse_file_name(name) is None:
        raise ValueError(f"invalid stream {stream!r} or sequence {seq}")
    return name


def parse_file_name(name: str) -> FileName | None:
    """Parse a final export name; ``None`` for anything that is not ours (temp files included)."""
    match = _NAME_RE.fullmatch(name)
    if match is None:
        return None
    seq = int(match["seq"])
    if seq < 1:
        return None
    return FileName(match["stream"], seq)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExportHeader(_Strict):
    """The first line of every export file."""

    format: Literal["netsync-export"]
    version: int
    stream: Annotated[str, Field(pattern=r"^[a-z][a-z_]{0,31}$")]
    seq: Annotated[int, Field(ge=1)]
    file_id: UUID
    kind: Literal["changes"]
    created_at: datetime
    records: Annotated[int, Field(ge=0)]


class UserData(_Strict):
    """What the Request Network keeps of a user: never a plaintext password."""

    username: Annotated[str, Field(min_length=1, max_length=150)]
    email: str | None = None
    password_hash: Annotated[str, Field(min_length=20, max_length=512)]
    role: Literal["admin", "user"]
    is_active: bool
    profile_type_id: UUID | None = None


class ChangeRecord(_Strict):
    """One change of one entity, exactly as the Response Network's outbox recorded it."""

    event_id: UUID
    entity: Literal["user"]
    entity_id: UUID
    version: Annotated[int, Field(ge=1)]
    op: Literal["upsert", "delete"]
    occurred_at: datetime
    correlation_id: Annotated[str, Field(max_length=128)] | None = None
    data: UserData | None = None

    @model_validator(mode="after")
    def _upsert_has_data(self) -> ChangeRecord:
        if self.op == "upsert" and self.data is None:
            raise ValueError("an upsert record needs data")
        return self
