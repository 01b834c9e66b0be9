"""User changes. Every change bumps the user's version and writes an outbox row in the caller's
transaction; the caller (the unit of work) commits, this module only flushes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.db import ResponseSession
from app.outbox.models import OutboxEvent
from app.outbox.service import record_change
from app.users.models import User
from app.users.policy import password_problems
from netsync.errors import AlreadyExists, InvalidInput, NotFound
from netsync.passwords import hash_password


class WeakPassword(InvalidInput):
    code = "weak_password"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("the password " + "; ".join(problems))
        self.problems = problems


def sync_payload(user: User) -> dict[str, Any]:
    """The user as the Request Network receives it: the hash, never the password."""
    return {
        "username": user.username,
        "email": user.email,
        "password_hash": user.password_hash,
        "role": user.role,
        "is_active": user.is_active,
        "profile_type_id": str(user.profile_type_id) if user.profile_type_id else None,
    }


def check_password(password: str, *, username: str) -> None:
    problems = password_problems(password, username=username)
    if problems:
        raise WeakPassword(problems)


async def _record(session: ResponseSession, user: User) -> OutboxEvent:
    return await record_change(
        session,
        entity="user",
        entity_id=user.id,
        version=user.version,
        op="upsert",
        data=sync_payload(user),
    )


async def get_by_username(session: ResponseSession, username: str) -> User | None:
    result = await session.execute(
        select(User).where(func.lower(User.username) == username.lower())
    )
    return result.scalar_one_or_none()


async def create_user(
    session: ResponseSession,
    *,
    username: str,
    email: str | None,
    password: str,
    role: str,
    is_active: bool = True,
) -> tuple[User, OutboxEvent]:
    check_password(password, username=username)
    if await get_by_username(session, username) is not None:
        raise AlreadyExists(f"username {username!r} is taken")
    user = User(
        id=uuid.uuid4(),
        username=username,
        email=email,
        password_hash=await hash_password(password),
        role=role,
        is_active=is_active,
        version=1,
    )
    session.add(user)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:  # a concurrent create of the same name won the race
        raise AlreadyExists(f"username {username!r} is taken") from exc
    await session.refresh(user)
    return user, await _record(session, user)


async def set_password(
    session: ResponseSession, user_id: uuid.UUID, new_password: str
) -> tuple[User, OutboxEvent]:
    """Hash first (slow, no lock held), then lock the row, bump the version and record it."""
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    check_password(new_password, username=user.username)
    new_hash = await hash_password(new_password)
    locked = await session.get(User, user_id, with_for_update=True, populate_existing=True)
    if locked is None:
        raise NotFound(f"user {user_id} does not exist")
    locked.password_hash = new_hash
    locked.version += 1
    locked.password_changed_at = locked.updated_at = datetime.now(UTC)
    await session.flush()
    await session.refresh(locked)
    return locked, await _record(session, locked)
