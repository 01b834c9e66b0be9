"""User changes. Every change bumps the user's version and writes an outbox row in the caller's
transaction; the caller (the unit of work) commits, this module only flushes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.db import ResponseSession, violated_constraint
from app.fields import clean_text
from app.outbox.models import OutboxEvent
from app.outbox.service import record_delete, record_upsert
from app.profile_types.service import UnknownProfileType, require_exists
from app.users.models import User
from app.users.policy import password_problems
from exchange.entities import USER
from netsync.errors import AlreadyExists, InvalidInput, NotFound
from netsync.passwords import hash_password


class WeakPassword(InvalidInput):
    code = "weak_password"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("the password " + "; ".join(problems))
        self.problems = problems


def check_password(password: str, *, username: str) -> None:
    problems = password_problems(password, username=username)
    if problems:
        raise WeakPassword(problems)


async def get_by_username(session: ResponseSession, username: str) -> User | None:
    try:
        clean_text(username)
    except ValueError:  # no stored name contains what PostgreSQL cannot even compare
        return None
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
    profile_type_id: uuid.UUID | None = None,
) -> tuple[User, OutboxEvent]:
    check_password(password, username=username)
    if await get_by_username(session, username) is not None:
        raise AlreadyExists(f"username {username!r} is taken")
    if profile_type_id is not None:
        await require_exists(session, profile_type_id)
    user = User(
        id=uuid.uuid4(),
        username=username,
        email=email,
        password_hash=await hash_password(password),
        role=role,
        is_active=is_active,
        profile_type_id=profile_type_id,
        version=1,
    )
    session.add(user)
    await _flush(session, user)
    await session.refresh(user)
    return user, await record_upsert(session, USER, user)


async def _flush(session: ResponseSession, user: User) -> None:
    """Flush in a savepoint, turning a lost race into the error the caller would have got."""
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        constraint = violated_constraint(exc)
        if constraint == "uq_users_username_lower":  # a concurrent change took the name
            raise AlreadyExists(f"username {user.username!r} is taken") from exc
        if constraint == "fk_users_profile_type_id_profile_types":  # deleted meanwhile
            raise UnknownProfileType(f"profile type {user.profile_type_id} does not exist") from exc
        raise


async def get(session: ResponseSession, user_id: uuid.UUID, *, for_update: bool = False) -> User:
    user = await session.get(
        User, user_id, with_for_update=for_update, populate_existing=for_update
    )
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    return user


async def list_users(
    session: ResponseSession,
    *,
    username: str | None = None,
    profile_type_id: uuid.UUID | None = None,
    is_active: bool | None = None,
    role: str | None = None,
    limit: int,
    offset: int,
) -> tuple[list[User], int]:
    where = []
    if username:
        where.append(User.username.icontains(username, autoescape=True))
    if profile_type_id is not None:
        where.append(User.profile_type_id == profile_type_id)
    if is_active is not None:
        where.append(User.is_active.is_(is_active))
    if role is not None:
        where.append(User.role == role)
    total = await session.scalar(select(func.count()).select_from(User).where(*where))
    rows = await session.scalars(
        select(User)
        .where(*where)
        .order_by(func.lower(User.username), User.id)
        .limit(limit)
        .offset(offset)
    )
    return list(rows), total or 0


async def update_user(
    session: ResponseSession, user_id: uuid.UUID, changes: dict[str, Any]
) -> tuple[User, OutboxEvent | None]:
    """Apply the given fields (who may change what is the endpoint's business).

    No outbox row and no new version when nothing actually changes.
    """
    user = await get(session, user_id, for_update=True)
    changed = {k: v for k, v in changes.items() if getattr(user, k) != v}
    if not changed:
        return user, None
    if "username" in changed:
        other = await get_by_username(session, changed["username"])
        if other is not None and other.id != user.id:
            raise AlreadyExists(f"username {changed['username']!r} is taken")
    if changed.get("profile_type_id") is not None:
        await require_exists(session, changed["profile_type_id"])
    for key, value in changed.items():
        setattr(user, key, value)
    user.version += 1
    user.updated_at = datetime.now(UTC)
    await _flush(session, user)
    return user, await record_upsert(session, USER, user)


async def delete_user(session: ResponseSession, user_id: uuid.UUID) -> OutboxEvent:
    """Delete the account and record a tombstone one version above its last state."""
    user = await get(session, user_id, for_update=True)
    await session.delete(user)
    await session.flush()
    return await record_delete(session, USER, user)


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
    locked.token_version += 1  # every token issued before dies
    locked.password_changed_at = locked.updated_at = datetime.now(UTC)
    await session.flush()
    await session.refresh(locked)
    return locked, await record_upsert(session, USER, locked)


async def rehash(
    session: ResponseSession, user_id: uuid.UUID, old_hash: str, new_hash: str
) -> OutboxEvent | None:
    """Store a stronger hash of the same password (made at sign-in) and sync it like any
    change; tokens stay valid (the password did not change). Nothing happens if the hash
    changed meanwhile (a password change won the race)."""
    locked = await session.get(User, user_id, with_for_update=True, populate_existing=True)
    if locked is None or locked.password_hash != old_hash:
        return None
    locked.password_hash = new_hash
    locked.version += 1
    locked.updated_at = datetime.now(UTC)
    await session.flush()
    await session.refresh(locked)
    return await record_upsert(session, USER, locked)
