"""The synced entities are declared once (``exchange.entities``): the ORM models of both networks
agree with the declaration, and an entity declared only here, in a test, crosses from the
Response database to the Request database, as a change and as a snapshot, with no other code."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from sqlalchemy import String
from sqlalchemy.dialects import postgresql

from app.db import make_sessionmaker
from app.outbox.service import record_change
from app.profile_types.models import ProfileType
from app.settings.models import Setting
from app.users.models import User
from exchange.entities import (
    ENTITIES,
    FLAG,
    JSON,
    MAX_JSON_DEPTH,
    REF,
    TEXT,
    Entity,
    FieldSpec,
    Invalid,
)
from exchange.format import ChangeRecord, ExportHeader
from importer.api.schemas import read_schema
from importer.daemon.entities import BOOKKEEPING
from importer.models import SyncedProfileType, SyncedSetting, SyncedUser
from jobs.relay import OutboxRelay
from jobs.snapshots import export_snapshot
from netsync.db import make_engine
from tests.conftest import MakeImporter
from tests.queries import fetch
from tests.support import Sandbox

MODELS: dict[str, tuple[type[Any], type[Any]]] = {
    "user": (User, SyncedUser),
    "setting": (Setting, SyncedSetting),
    "profile_type": (ProfileType, SyncedProfileType),
}
_SQL = {
    "text": ("VARCHAR", "TEXT"),
    "boolean": ("BOOLEAN",),
    "uuid": ("UUID",),
    "jsonb": ("JSONB",),
}


def _sql(column: Any) -> str:
    compiled: object = column.type.compile(dialect=postgresql.dialect())  # type: ignore[no-untyped-call]
    return str(compiled)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_both_networks_models_hold_every_declared_field_with_its_type(name: str) -> None:
    entity = ENTITIES[name]
    source, replica = MODELS[name]
    assert (source.__tablename__, replica.__tablename__) == (entity.source, entity.replica)
    replica_columns = {c.name: c for c in replica.__table__.columns}
    assert set(replica_columns) == {*BOOKKEEPING, *entity.names, "applied_at"}
    for kept, sql in BOOKKEEPING.items():
        assert _sql(replica_columns[kept]).lower().replace("integer", "int") == sql.replace(
            "timestamptz", "timestamp with time zone"
        ), kept
    for f in entity.fields:
        for model in (source, replica):
            column = model.__table__.columns[f.name]
            assert _sql(column).split("(")[0] in _SQL[f.kind.sql], (model, f.name)
            if isinstance(column.type, String) and column.type.length is not None:
                longest = max(map(len, f.choices)) if f.choices else f.high
                assert column.type.length >= longest, (model, f.name)  # holds all it may get
        assert source.__table__.columns[f.name].nullable == f.null, f.name


#: An entity only this test knows: one field of every kind.
NOTE = Entity(
    "note",
    "test_notes",
    "test_synced_notes",
    (
        FieldSpec("title", TEXT, low=1, high=80),
        FieldSpec("secret", TEXT, null=True, high=40, secret=True),
        FieldSpec("pinned", FLAG),
        FieldSpec("tags", JSON, names=True, low=1, high=20),
        FieldSpec("extra", JSON),
        FieldSpec("owner_id", REF, null=True),
    ),
)


@pytest.fixture
async def notes(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Entity]:
    """``NOTE`` declared, and its tables made the way its migrations would."""
    monkeypatch.setitem(ENTITIES, NOTE.name, NOTE)
    fields = ", ".join(f"{f.name} {f.kind.sql}" for f in NOTE.fields)
    kept = ", ".join(f"{c} {sql}" for c, sql in BOOKKEEPING.items() if c != "id")
    await fetch(
        sandbox.services.response_url,
        f"CREATE TABLE test_notes (id uuid PRIMARY KEY, version int NOT NULL,"
        f" updated_at timestamptz NOT NULL DEFAULT now(), {fields})",
    )
    await fetch(
        sandbox.services.request_url,
        f"CREATE TABLE test_synced_notes (id uuid PRIMARY KEY, {kept}, {fields},"
        " applied_at timestamptz)",
    )
    try:
        yield NOTE
    finally:
        await fetch(sandbox.services.response_url, "DROP TABLE test_notes")
        await fetch(sandbox.services.request_url, "DROP TABLE test_synced_notes")


async def test_an_entity_declared_once_crosses_as_a_change_and_as_a_snapshot(
    sandbox: Sandbox, notes: Entity, make_importer: MakeImporter
) -> None:
    note_id, owner = uuid.uuid4(), uuid.uuid4()
    extra = {"colour": "teal", "sizes": [1, 2.5]}
    engine = make_engine(sandbox.services.response_url)
    sessions = make_sessionmaker(engine)
    try:
        # the Response side: a row and its outbox change, in one transaction, as a domain writes
        async with sessions() as session, session.begin():
            conn = await session.connection()
            row = (
                await conn.exec_driver_sql(
                    "INSERT INTO test_notes (id, version, title, secret, pinned, tags, extra,"
                    " owner_id) VALUES ($1, 1, 'Groceries', 'hush', true, '[\"home\"]', $2, $3)"
                    " RETURNING *",
                    (note_id, orjson.dumps(extra).decode(), owner),
                )
            ).one()
            await record_change(
                session,
                entity=NOTE.name,
                entity_id=note_id,
                version=1,
                op="upsert",
                data=NOTE.payload(row),
            )
        relay = OutboxRelay(
            sessions, sandbox.exports, sandbox.signer, recipients=sandbox.recipients
        )
        assert len((await relay.run()).files) == 1
        applied = await make_importer().scan_once()
        assert applied.applied == 1, applied
        synced = await fetch(sandbox.services.request_url, "SELECT * FROM test_synced_notes")
        assert len(synced) == 1
        assert (synced[0]["id"], synced[0]["title"], synced[0]["pinned"]) == (
            note_id,
            "Groceries",
            True,
        )
        assert (synced[0]["owner_id"], synced[0]["secret"], synced[0]["last_changes_seq"]) == (
            owner,
            "hush",
            1,
        )
        assert orjson.loads(synced[0]["tags"]) == ["home"]
        assert orjson.loads(synced[0]["extra"]) == extra

        # a snapshot of it, after a change the outbox never saw: the snapshot brings it
        await fetch(
            sandbox.services.response_url, "UPDATE test_notes SET title = 'Errands', version = 2"
        )
        snapshot = await export_snapshot(
            engine,
            sessions,
            sandbox.exports,
            sandbox.signer,
            NOTE.name,
            recipients=sandbox.recipients,
        )
        assert snapshot.stream == "snapshot_test_notes"
        assert (await make_importer().scan_once()).applied == 1
        synced = await fetch(sandbox.services.request_url, "SELECT * FROM test_synced_notes")
        assert (synced[0]["title"], synced[0]["version"], synced[0]["last_changes_seq"]) == (
            "Errands",
            2,
            None,
        )
        assert orjson.loads(synced[0]["extra"]) == extra
    finally:
        await engine.dispose()

    # its record contract and its read schema come from the same declaration
    shown = read_schema(NOTE, "NoteOut").model_fields
    assert list(shown) == [
        "id",
        "title",
        "pinned",
        "tags",
        "extra",
        "owner_id",
        "version",
        "changed_at",
    ]
    with pytest.raises(ValueError, match="title"):
        ChangeRecord.model_validate(
            {
                "event_id": str(uuid.uuid4()),
                "entity": "note",
                "entity_id": str(note_id),
                "version": 3,
                "op": "upsert",
                "occurred_at": "2026-12-01T00:00:00Z",
                "data": {"title": "x" * 81, "pinned": True, "extra": None},
            }
        )


_RECORD = {
    "event_id": "6f1c1f8e-5d8e-4a4e-9a55-2f4f3b1f0a01",
    "entity_id": "6f1c1f8e-5d8e-4a4e-9a55-2f4f3b1f0a02",
    "version": 1,
    "op": "upsert",
    "occurred_at": "2026-12-01T00:00:00Z",
}
_USER = {
    "username": "ada",
    "password_hash": "$2b$12$" + "a" * 53,
    "role": "user",
    "is_active": True,
}
_DEEP: Any = 1
for _ in range(MAX_JSON_DEPTH + 1):
    _DEEP = [_DEEP]


@pytest.mark.parametrize(
    ("entity", "raw"),
    [
        ("setting", b'{"key":"a.b","value":9223372036854775808}'),
        ("setting", b'{"key":"a.b","value":-9223372036854775809}'),
        ("setting", b'{"key":"a.b","value":[18446744073709551616]}'),
        ("setting", b'{"key":"a.b","value":' + orjson.dumps(_DEEP) + b"}"),
        ("setting", b'{"key":"a.b"}'),
        ("setting", b'{"key":"A.b","value":1}'),
        ("setting", b'{"key":"a.b\\n","value":1}'),
        ("user", orjson.dumps({**_USER, "profile_type_id": "x" * 36})),
        ("user", orjson.dumps({**_USER, "profile_type_id": "6f1c1f8e5d8e4a4e9a552f4f3b1f0a02"})),
        (
            "user",
            orjson.dumps({**_USER, "profile_type_id": "{6f1c1f8e-5d8e-4a4e-9a55-2f4f3b1f0a02}"}),
        ),
        ("user", orjson.dumps({**_USER, "is_active": "true"})),
        ("user", orjson.dumps({**_USER, "is_active": 1})),
        ("user", orjson.dumps({**_USER, "role": None})),
        ("user", orjson.dumps({**_USER, "email": "e" * 321})),
        ("user", orjson.dumps({**_USER, "password_hash": "short"})),
        ("user", orjson.dumps({**_USER, "nickname": "x"})),
        ("profile_type", b'{"name":"ops","permissions":null}'),
        ("profile_type", b'{"name":"ops","permissions":[""]}'),
        ("profile_type", b'{"name":"","permissions":[]}'),
    ],
)
def test_the_fast_snapshot_check_refuses_what_the_record_contract_refuses(
    entity: str, raw: bytes
) -> None:
    """A snapshot's rows are checked without pydantic (ten times cheaper): the two checks must
    refuse the same data, or a file could carry in a snapshot what it could not as a change."""
    declared = ENTITIES[entity]
    with pytest.raises(ValidationError):
        ChangeRecord.model_validate_json(
            orjson.dumps({**_RECORD, "entity": entity}).replace(b"}", b',"data":' + raw + b"}", 1)
        )
    with pytest.raises(Invalid):
        declared.row(orjson.loads(raw))


@pytest.mark.parametrize(
    ("entity", "data"),
    [
        ("user", {**_USER, "profile_type_id": "6f1c1f8e-5d8e-4a4e-9a55-2f4f3b1f0a02"}),
        ("user", {**_USER, "email": None}),
        ("setting", {"key": "smtp.port", "value": {"a": [1, 2.5, None, True]}}),
        ("setting", {"key": "a.b", "value": 9223372036854775807, "description": None}),
        ("profile_type", {"name": "ops"}),
        ("profile_type", {"name": "ops", "permissions": ["read", "write"], "description": "d"}),
    ],
)
def test_the_two_checks_accept_the_same_data_as_the_same_row(
    entity: str, data: dict[str, Any]
) -> None:
    declared = ENTITIES[entity]
    record = ChangeRecord.model_validate({**_RECORD, "entity": entity, "data": data})
    assert record.data is not None
    as_row = declared.row(data)
    for column, value in zip(declared.names, as_row, strict=True):
        held = getattr(record.data, column)
        if declared.sql_columns[column] == "jsonb":
            assert orjson.loads(value) == held, column
        else:
            assert value == (
                None if held is None else str(held) if column.endswith("_id") else held
            )


def test_an_entity_whose_data_fits_another_model_is_judged_by_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A later entity with only a ``name`` would fit the profile type's model first (the union
    tries the declared models in order): its record is still checked by its own model."""
    tag = Entity("tag", "tags", "synced_tags", (FieldSpec("name", TEXT, low=1, high=10),))
    monkeypatch.setitem(ENTITIES, tag.name, tag)
    record = ChangeRecord.model_validate({**_RECORD, "entity": "tag", "data": {"name": "x"}})
    assert isinstance(record.data, tag.model)
    with pytest.raises(ValidationError, match="at most 10 characters"):
        ChangeRecord.model_validate({**_RECORD, "entity": "tag", "data": {"name": "x" * 11}})
    with pytest.raises(ValidationError):  # what the profile type's model added is not taken
        ChangeRecord.model_validate(
            {**_RECORD, "entity": "tag", "data": {"name": "x", "permissions": []}}
        )


def test_a_declaration_names_only_plain_identifiers() -> None:
    with pytest.raises(ValueError, match="identifier"):
        Entity("note", "notes; DROP TABLE users", "synced_notes", ())
    with pytest.raises(ValueError, match="identifier"):
        Entity("note", "notes", "synced_notes", (FieldSpec('title"', TEXT, high=5),))


def test_a_snapshot_carries_only_the_entity_its_stream_is_for() -> None:
    """A ``snapshot_users`` file whose header says it holds settings would be merged into the
    settings (and remove every setting it lacks): its header is refused."""
    header = {
        "format": "netsync-export",
        "version": 2,
        "stream": "snapshot_users",
        "seq": 1,
        "file_id": "6f1c1f8e-5d8e-4a4e-9a55-2f4f3b1f0a03",
        "kind": "snapshot",
        "created_at": "2026-12-01T00:00:00Z",
        "records": 0,
        "changes_seq": 0,
    }
    assert ExportHeader.model_validate({**header, "entity": "user"}).entity == "user"
    with pytest.raises(ValidationError, match="its stream carries"):
        ExportHeader.model_validate({**header, "entity": "setting"})
