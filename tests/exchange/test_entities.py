"""The synced entities are declared once (``exchange.entities``): the ORM models of both networks
agree with the declaration, and an entity declared only here, in a test, crosses from the
Response database to the Request database, as a change and as a snapshot, with no other code."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from sqlalchemy import String
from sqlalchemy.dialects import postgresql

from app.db import make_sessionmaker
from app.outbox.service import record_change
from app.profile_types.models import ProfileType
from app.settings.models import Setting
from app.users.models import User
from exchange.entities import ENTITIES, FLAG, JSON, REF, TEXT, Entity, FieldSpec
from exchange.format import ChangeRecord
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
