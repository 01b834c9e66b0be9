"""File names and the typed shape of an export file's envelope, header and records.

An export file (version 2) is one clear envelope line (what routing needs: stream, sequence,
the key ids it is sealed to), the age ciphertext of a JSON Lines body (one header object, one
object per record), and one signature trailer over everything before it. Version 1 files hold
the same body in clear instead of the envelope and ciphertext.
Files are immutable once published; a change is never appended to an existing file. Every file
carries its stream's sequence number, every record its event id and its entity's version, so the
reader can order files, detect gaps, ignore replays and never let an older value win.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal, Union
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_validator,
)

from exchange.entities import ENTITIES

FORMAT_NAME = "netsync-export"
#: Version 2: the records are sealed (age) to the Request Network; only the envelope is clear.
FORMAT_VERSION = 2
#: Version 1: the previous format, records in clear. Read for the upgrade (files in flight), and
#: in production only where ``NETSYNC_ACCEPT_PLAINTEXT=true`` says so.
PLAINTEXT_VERSION = 1
FILE_SUFFIX = ".jsonl"
SEQ_DIGITS = 12
STAGING_DIRNAME = ".staging"

# Stream names are short lowercase words; sequence numbers are zero-padded so that a plain sort
# of the directory listing is also the sequence order.
_NAME_RE = re.compile(r"^(?P<stream>[a-z][a-z_]{0,31})-(?P<seq>[0-9]{12})\.jsonl$")

#: The stream of incremental changes taken from the Response Network's outbox.
CHANGES_STREAM = "changes"
#: The stream of finished job results: the audit trail the Request Network keeps.
RESULTS_STREAM = "results"
#: A subdirectory of the exports directory holding ``<stream>.jsonl``: the newest file of each
#: snapshot stream under a stable name. Importers never read it (its entries are not final names).
LATEST_DIRNAME = "latest"


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


ExportKind = Literal["changes", "snapshot", "results"]


class _SnapshotStreams(Mapping[str, str]):
    """Per entity, the snapshot stream that carries it whole (``snapshot_users``, …), as
    ``exchange.entities.ENTITIES`` declares them."""

    def __getitem__(self, entity: str) -> str:
        return ENTITIES[entity].snapshot_stream

    def __iter__(self) -> Iterator[str]:
        return iter(ENTITIES)

    def __len__(self) -> int:
        return len(ENTITIES)


SNAPSHOT_STREAMS: Mapping[str, str] = _SnapshotStreams()


def kind_of_stream(stream: str) -> ExportKind | None:
    """What a stream's files hold, from its name alone: decided before any byte is read, so a
    header cannot choose how its own file is read (or how large it may be). ``None`` for a
    stream netsync does not write: such a file is a foreign name, never read."""
    if stream == CHANGES_STREAM:
        return "changes"
    if stream == RESULTS_STREAM:
        return "results"
    if stream in SNAPSHOT_STREAMS.values():
        return "snapshot"
    return None


class Sealing(_Strict):
    alg: Literal["age-x25519"]
    #: Key ids of the recipients the body is encrypted to (``exchange.sealing.key_id_of``).
    recipients: Annotated[
        list[Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]], Field(min_length=1, max_length=64)
    ]


class Envelope(_Strict):
    """The clear first line of a sealed (version 2) file, covered by the signature."""

    format: Literal["netsync-export"]
    version: Literal[2]
    stream: Annotated[str, Field(pattern=r"^[a-z][a-z_]{0,31}$")]
    seq: Annotated[int, Field(ge=1)]
    sealed: Sealing


class ExportHeader(_Strict):
    """The first line of every export body (inside the ciphertext of a sealed file)."""

    format: Literal["netsync-export"]
    version: int
    stream: Annotated[str, Field(pattern=r"^[a-z][a-z_]{0,31}$")]
    seq: Annotated[int, Field(ge=1)]
    file_id: UUID
    kind: ExportKind
    created_at: datetime
    records: Annotated[int, Field(ge=0)]
    #: Snapshots only: the entity type the snapshot holds in full.
    entity: Annotated[str, Field(max_length=32)] | None = None
    #: Snapshots only: the last ``changes`` sequence number allocated when the snapshot was
    #: read. An entity missing from a complete snapshot is removed on the Request side only if
    #: its last change came from a ``changes`` file at or below this mark; anything changed
    #: later is newer than the snapshot and stays.
    changes_seq: Annotated[int, Field(ge=0)] | None = None
    #: The Response database's generation the file was numbered in (0, the first, is not
    #: written). A database restored from a backup begins a new, larger one: its files take
    #: the place of everything the restore undid, and a file of an older generation arriving
    #: after a newer one is superseded (``docs/architecture.md``, "Restored databases").
    generation: Annotated[int, Field(ge=0)] = 0
    #: The stream's last sequence number before ``generation`` began: its first file is one
    #: more, so a file lost at a generation's start is a gap like any other.
    since_seq: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _snapshot_fields(self) -> ExportHeader:
        if self.kind == "snapshot" and (self.entity is None or self.changes_seq is None):
            raise ValueError("a snapshot header names its entity and changes_seq")
        if self.entity is not None and self.entity not in ENTITIES:
            raise ValueError("not an entity netsync syncs")
        if self.kind == "snapshot" and SNAPSHOT_STREAMS[self.entity or ""] != self.stream:
            raise ValueError("a snapshot's entity is the one its stream carries")
        if self.since_seq >= self.seq:
            raise ValueError("since_seq is below the file's own sequence number")
        return self

    @property
    def place(self) -> tuple[int, int]:
        """Where the file stands in its stream across generations: newer sorts higher."""
        return (self.generation, self.seq)


def generation_fields(generation: int, since_seq: int) -> dict[str, int]:
    """The header fields of a file numbered in ``generation`` (none for the first, so its files
    read as they always did)."""
    return {"generation": generation, "since_seq": since_seq} if generation else {}


if TYPE_CHECKING:
    _Data = BaseModel
else:
    _Data = Union[(*(e.model for e in ENTITIES.values()), dict[str, JsonValue])]


class ChangeRecord(_Strict):
    """One entity at one version, exactly as the Response Network's outbox recorded it.

    Records carry the entity's whole state, not a delta: applying a record is an upsert guarded
    by ``version``, so order and repetition cannot make an older state win.
    """

    event_id: UUID
    entity: Annotated[str, Field(max_length=32)]
    entity_id: UUID
    version: Annotated[int, Field(ge=1)]
    op: Literal["upsert", "delete"]
    occurred_at: datetime
    correlation_id: Annotated[str, Field(max_length=128)] | None = None
    #: The entity's data, validated by its own model (``exchange.entities``): only an upsert
    #: carries it. The declared models are tried first, in pydantic's core (the first that fits
    #: wins, then ``_entity_data`` checks it is the entity's): a third of the cost of validating
    #: through Python. An entity declared later (a test's) arrives as a dict and is validated by
    #: its model there.
    data: Annotated[
        SerializeAsAny[_Data] | None, Field(union_mode="left_to_right", validate_default=True)
    ] = None

    @field_validator("entity")
    @classmethod
    def _known_entity(cls, entity: str) -> str:
        if entity not in ENTITIES:
            raise ValueError("not an entity netsync syncs")
        return entity

    @field_validator("data")
    @classmethod
    def _entity_data(cls, data: _Data | None, info: ValidationInfo) -> _Data | None:
        """Upserts carry their entity's data (the fields before it were validated first)."""
        entity = ENTITIES.get(info.data.get("entity", ""))
        if data is None:
            if info.data.get("op") == "upsert":
                raise ValueError("an upsert record needs data")
            return data
        if entity is None:
            return data
        if isinstance(data, dict):
            return entity.model.model_validate(data)
        if not isinstance(data, entity.model):
            # another entity's model fitted first: the entity's own model decides, from what
            # the record gave (never a default the other model added)
            return entity.model.model_validate(data.model_dump(mode="json", exclude_unset=True))
        return data


class JobResultRecord(_Strict):
    """One finished job of the Response Network's workers, as the audit trail keeps it."""

    job_id: Annotated[str, Field(min_length=1, max_length=200)]
    function: Annotated[str, Field(max_length=200)]
    queue: Annotated[str, Field(max_length=200)]
    status: Literal["complete", "failed"]
    tries: Annotated[int, Field(ge=0)]
    enqueued_at: datetime
    started_at: datetime
    finished_at: datetime
    #: The job's result (or error) cut to a few KiB: what happened, not a data dump.
    summary: JsonValue = None
