"""``netsync verify``: compare the two databases entity by entity and print the drift.

Both sides are read in id order, a chunk at a time, and merged like a sorted merge join, so memory
stays flat however many users there are. For each entity the Request Network must hold the same
version with the same synced fields; what it holds otherwise is drift:

- ``missing``: on the Response Network, absent (or deleted) on the Request Network;
- ``extra``: live on the Request Network, absent from the Response Network;
- ``older`` / ``newer``: both hold it, at a lower / higher version on the Request side;
- ``different``: same version, different content (a change that was applied incompletely).

Changes in flight show up as ``older`` or ``missing`` for a moment: run it again, or compare
when the outbox backlog is 0. Exit code 0 only when the two agree.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import typer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import ResponseSettings
from app.profile_types.models import ProfileType
from app.settings.models import Setting
from app.users.models import User
from exchange.entities import PROFILE_TYPE, SETTING, USER
from importer.config import RequestSettings
from importer.models import SyncedProfileType, SyncedSetting, SyncedUser
from netsync.db import make_engine
from ops.cli.output import JsonOption, err, out, print_json, print_table, progress, run

CHUNK = 5000
KINDS = ("missing", "extra", "older", "newer", "different")
SHOWN = 50
CLI = "netsync-cli"


@dataclass(frozen=True)
class Entity:
    name: str
    source: type[User | Setting | ProfileType]
    replica: type[SyncedUser | SyncedSetting | SyncedProfileType]
    fields: tuple[str, ...]


ENTITIES = (
    Entity(USER.name, User, SyncedUser, USER.names),
    Entity(SETTING.name, Setting, SyncedSetting, SETTING.names),
    Entity(PROFILE_TYPE.name, ProfileType, SyncedProfileType, PROFILE_TYPE.names),
)


@dataclass(frozen=True)
class Drift:
    entity: str
    id: uuid.UUID
    kind: str
    response_version: int | None
    request_version: int | None


async def _count(engine: AsyncEngine, model: type[Any]) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(model))).scalar_one())


async def _rows(engine: AsyncEngine, model: type[Any], columns: list[str]) -> AsyncIterator[Any]:
    """Every row of ``model`` in id order, read ``CHUNK`` rows at a time by keyset."""
    last: uuid.UUID | None = None
    wanted = [getattr(model, c) for c in columns]
    while True:
        query = select(*wanted).order_by(model.id).limit(CHUNK)
        if last is not None:
            query = query.where(model.id > last)
        async with engine.connect() as conn:
            chunk = (await conn.execute(query)).all()
        for row in chunk:
            yield row
        if len(chunk) < CHUNK:
            return
        last = chunk[-1].id


def _same(entity: Entity, a: Any, b: Any) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in entity.fields)


async def compare_entity(
    entity: Entity, response: AsyncEngine, request: AsyncEngine, advance: Any
) -> list[Drift]:
    drift: list[Drift] = []
    source = _rows(response, entity.source, ["id", "version", *entity.fields])
    replica = _rows(request, entity.replica, ["id", "version", "deleted", *entity.fields])
    a = await anext(source, None)
    b = await anext(replica, None)
    while a is not None or b is not None:
        if a is not None and (b is None or a.id < b.id):
            drift.append(Drift(entity.name, a.id, "missing", a.version, None))
            a = await anext(source, None)
            advance(1)
        elif b is not None and (a is None or b.id < a.id):
            if not b.deleted:
                drift.append(Drift(entity.name, b.id, "extra", None, b.version))
            b = await anext(replica, None)
            advance(1)
        else:
            assert a is not None
            assert b is not None
            kind = None
            if b.deleted:
                kind = "missing"
            elif b.version < a.version:
                kind = "older"
            elif b.version > a.version:
                kind = "newer"
            elif not _same(entity, a, b):
                kind = "different"
            if kind is not None:
                drift.append(Drift(entity.name, a.id, kind, a.version, b.version))
            a, b = await anext(source, None), await anext(replica, None)
            advance(2)
    return drift


async def _verify(quiet: bool) -> dict[str, Any]:
    response = make_engine(
        ResponseSettings().database_url, pool_size=1, application_name="netsync-cli"
    )
    request = make_engine(
        RequestSettings().database_url, pool_size=1, application_name="netsync-cli"
    )
    try:
        summary: dict[str, dict[str, int]] = {}
        drift: list[Drift] = []
        with progress("rows", quiet=quiet) as bar:
            for entity in ENTITIES:
                counts = (
                    await _count(response, entity.source),
                    await _count(request, entity.replica),
                )
                task = bar.add_task(f"comparing {entity.name}s", total=sum(counts))
                found = await compare_entity(
                    entity, response, request, lambda n, t=task: bar.advance(t, n)
                )
                kinds = Counter(d.kind for d in found)
                summary[entity.name] = {
                    "response": counts[0],
                    "request": counts[1],
                    **{k: kinds.get(k, 0) for k in KINDS},
                }
                drift.extend(found)
    finally:
        await response.dispose()
        await request.dispose()
    return {
        "agree": not drift,
        "entities": summary,
        "drift": [
            {
                "entity": d.entity,
                "id": str(d.id),
                "kind": d.kind,
                "response_version": d.response_version,
                "request_version": d.request_version,
            }
            for d in drift
        ],
    }


def verify(as_json: bool = JsonOption) -> None:
    """Compare users, settings and profile types in both databases; exit 0 only if they agree."""
    report = run(_verify(quiet=as_json))
    if as_json:
        print_json(report)
    else:
        print_table(
            "Response vs Request",
            ["entity", "response rows", "request rows", *KINDS],
            (
                [name, c["response"], c["request"], *(c[k] for k in KINDS)]
                for name, c in report["entities"].items()
            ),
        )
        rows = report["drift"]
        if rows:
            print_table(
                "drift" + (f" (first {SHOWN} of {len(rows)})" if len(rows) > SHOWN else ""),
                ["entity", "id", "kind", "response version", "request version"],
                (
                    [d["entity"], d["id"], d["kind"], d["response_version"], d["request_version"]]
                    for d in rows[:SHOWN]
                ),
            )
        else:
            out.print("[green]the Request Network agrees with the Response Network[/green]")
    if not report["agree"]:
        if not as_json:
            err.print(f"[red]{len(report['drift'])} entities differ[/red]")
        raise typer.Exit(1)
