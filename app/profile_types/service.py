"""Profile type changes, versioned and recorded in the outbox in the caller's transaction.

Every change locks the row first (``FOR UPDATE``), so two concurrent changes get two different
versions: the Request Network keeps the higher one, which is also the one committed last here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.db import ResponseSession, violated_constraint
from app.outbox.models import OutboxEvent
from app.outbox.service import record_delete, record_upsert
from app.profile_types.models import ProfileType
from app.users.models import User
from exchange.entities import PROFILE_TYPE
from netsync.errors import AlreadyExists, Conflict, InvalidInput, NotFound


class UnknownProfileType(InvalidInput):
    code = "unknown_profile_type"


async def get(
    session: ResponseSession, profile_type_id: uuid.UUID, *, for_update: bool = False
) -> ProfileType:
    found = await session.get(
        ProfileType, profile_type_id, with_for_update=for_update, populate_existing=for_update
    )
    if found is None:
        raise NotFound(f"profile type {profile_type_id} does not exist")
    return found


async def require_exists(session: ResponseSession, profile_type_id: uuid.UUID) -> None:
    """For users referencing one: an unknown id is bad input (422), not a missing resource."""
    if await session.get(ProfileType, profile_type_id) is None:
        raise UnknownProfileType(f"profile type {profile_type_id} does not exist")


async def list_profile_types(
    session: ResponseSession, *, limit: int, offset: int
) -> tuple[list[ProfileType], int]:
    total = await session.scalar(select(func.count()).select_from(ProfileType))
    rows = await session.scalars(
        select(ProfileType)
        .order_by(func.lower(ProfileType.name), ProfileType.id)
        .limit(limit)
        .offset(offset)
    )
    return list(rows), total or 0


async def _name_taken(session: ResponseSession, name: str, *, other_than: uuid.UUID | None) -> bool:
    query = select(ProfileType.id).where(func.lower(ProfileType.name) == name.lower())
    if other_than is not None:
        query = query.where(ProfileType.id != other_than)
    return await session.scalar(query) is not None


async def _flush(session: ResponseSession, name: str) -> None:
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:  # a concurrent change took the name first
        if violated_constraint(exc) == "uq_profile_types_name_lower":
            raise AlreadyExists(f"profile type {name!r} already exists") from exc
        raise


async def create_profile_type(
    session: ResponseSession, *, name: str, description: str | None, permissions: list[str]
) -> tuple[ProfileType, OutboxEvent]:
    if await _name_taken(session, name, other_than=None):
        raise AlreadyExists(f"profile type {name!r} already exists")
    profile_type = ProfileType(
        id=uuid.uuid4(), name=name, description=description, permissions=permissions, version=1
    )
    session.add(profile_type)
    await _flush(session, name)
    await session.refresh(profile_type)
    return profile_type, await record_upsert(session, PROFILE_TYPE, profile_type)


async def update_profile_type(
    session: ResponseSession, profile_type_id: uuid.UUID, changes: dict[str, Any]
) -> tuple[ProfileType, OutboxEvent | None]:
    """Apply the given fields; no outbox row (and no new version) when nothing changes."""
    profile_type = await get(session, profile_type_id, for_update=True)
    changed = {k: v for k, v in changes.items() if getattr(profile_type, k) != v}
    if not changed:
        return profile_type, None
    if "name" in changed and await _name_taken(
        session, changed["name"], other_than=profile_type.id
    ):
        raise AlreadyExists(f"profile type {changed['name']!r} already exists")
    for key, value in changed.items():
        setattr(profile_type, key, value)
    profile_type.version += 1
    profile_type.updated_at = datetime.now(UTC)
    await _flush(session, profile_type.name)
    return profile_type, await record_upsert(session, PROFILE_TYPE, profile_type)


async def delete_profile_type(session: ResponseSession, profile_type_id: uuid.UUID) -> OutboxEvent:
    """Delete and record a tombstone; refused (409) while any user references it."""
    profile_type = await get(session, profile_type_id, for_update=True)
    in_use = await session.scalar(
        select(func.count()).select_from(User).where(User.profile_type_id == profile_type.id)
    )
    if in_use:
        raise Conflict(
            f"profile type {profile_type.name!r} is assigned to {in_use} user(s); "
            "assign them another profile type first"
        )
    await session.delete(profile_type)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:  # a user was given this profile type concurrently
        raise Conflict(f"profile type {profile_type.name!r} is in use") from exc
    return await record_delete(session, PROFILE_TYPE, profile_type)
