"""Setting changes, versioned and recorded in the outbox in the caller's transaction.

A setting is addressed by its key, but synced by its id: deleting ``app.title`` and creating it
again makes a new entity, so the old one's tombstone can never hide the new value.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.db import ResponseSession
from app.outbox.models import OutboxEvent
from app.outbox.service import record_delete, record_upsert
from app.settings.models import Setting
from exchange.entities import SETTING
from netsync.errors import AlreadyExists, NotFound

_SORTED = orjson.OPT_SORT_KEYS


def _same(old: Any, new: Any) -> bool:
    """Equal as JSON: ``1``, ``1.0`` and ``true`` are different values, key order is not."""
    try:
        return bool(orjson.dumps(old, option=_SORTED) == orjson.dumps(new, option=_SORTED))
    except TypeError:  # a value orjson cannot write is never the same as a new, valid one
        return False


async def get(session: ResponseSession, key: str, *, for_update: bool = False) -> Setting:
    query = select(Setting).where(Setting.key == key)
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    setting = await session.scalar(query)
    if setting is None:
        raise NotFound(f"setting {key!r} does not exist")
    return setting


async def list_settings(
    session: ResponseSession, *, prefix: str | None, limit: int, offset: int
) -> tuple[list[Setting], int]:
    where = [Setting.key.startswith(prefix, autoescape=True)] if prefix else []
    total = await session.scalar(select(func.count()).select_from(Setting).where(*where))
    rows = await session.scalars(
        select(Setting).where(*where).order_by(Setting.key).limit(limit).offset(offset)
    )
    return list(rows), total or 0


async def create_setting(
    session: ResponseSession, *, key: str, value: Any, description: str | None
) -> tuple[Setting, OutboxEvent]:
    if await session.scalar(select(Setting.id).where(Setting.key == key)) is not None:
        raise AlreadyExists(f"setting {key!r} already exists")
    setting = Setting(id=uuid.uuid4(), key=key, value=value, description=description, version=1)
    session.add(setting)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:  # a concurrent create of the same key won the race
        raise AlreadyExists(f"setting {key!r} already exists") from exc
    await session.refresh(setting)
    return setting, await record_upsert(session, SETTING, setting)


async def update_setting(
    session: ResponseSession, key: str, changes: dict[str, Any]
) -> tuple[Setting, OutboxEvent | None]:
    """Apply the given fields; no outbox row (and no new version) when nothing changes."""
    setting = await get(session, key, for_update=True)
    changed = {k: v for k, v in changes.items() if not _same(getattr(setting, k), v)}
    if not changed:
        return setting, None
    for name, value in changed.items():
        setattr(setting, name, value)
    setting.version += 1
    setting.updated_at = datetime.now(UTC)
    await session.flush()
    return setting, await record_upsert(session, SETTING, setting)


async def delete_setting(session: ResponseSession, key: str) -> OutboxEvent:
    setting = await get(session, key, for_update=True)
    await session.delete(setting)
    await session.flush()
    return await record_delete(session, SETTING, setting)
