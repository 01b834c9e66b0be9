"""``/api/v1/users``: accounts and passwords. Every change answers the id of its sync job."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from app.deps import AdminUser, CurrentUser, UowDep, client_address, sign_in_guard
from app.fields import Limit, Offset, Page, Text
from app.outbox.models import OutboxEvent
from app.queue.client import sync_job_id
from app.users import service
from app.users.models import User
from app.users.schemas import (
    ChangeOwnPassword,
    ResetPassword,
    Role,
    SyncAccepted,
    UserChanged,
    UserCreate,
    UserCreated,
    UserOut,
    UserUpdate,
)
from netsync.errors import ERROR_RESPONSES, NotPermitted
from netsync.passwords import verify_password

router = APIRouter(prefix="/api/v1/users", tags=["users"], responses=ERROR_RESPONSES)

#: What only an administrator may change, and nobody on their own account (role, active flag).
#: The username is among them: a rename to a taken name must answer 409, which would let any
#: signed-in user probe which usernames exist; a user who refused a rename whatever the name
#: learns nothing.
_ADMIN_FIELDS = frozenset({"username", "role", "is_active", "profile_type_id"})
_NOT_ON_SELF = frozenset({"role", "is_active"})

UsernameFilter = Annotated[
    Text | None,
    Query(max_length=150, description="Only usernames containing this (case-insensitive)."),
]


def _changed(user: User, event: OutboxEvent | None) -> UserChanged:
    return UserChanged(
        **UserOut.model_validate(user).model_dump(),
        sync_job_id=sync_job_id(event.event_id) if event is not None else None,
    )


def _self_or_admin(caller: User, user_id: uuid.UUID) -> None:
    if caller.role != "admin" and caller.id != user_id:
        raise NotPermitted("you may only read and change your own account")


@router.get("")
async def list_users(
    uow: UowDep,
    _: AdminUser,
    username: UsernameFilter = None,
    profile_type_id: Annotated[uuid.UUID | None, Query()] = None,
    is_active: Annotated[bool | None, Query()] = None,
    role: Annotated[Role | None, Query()] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[UserOut]:
    rows, total = await service.list_users(
        uow.session,
        username=username,
        profile_type_id=profile_type_id,
        is_active=is_active,
        role=role,
        limit=limit,
        offset=offset,
    )
    items = [UserOut.model_validate(r) for r in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, uow: UowDep, _: AdminUser) -> UserCreated:
    user, event = await service.create_user(
        uow.session,
        username=body.username,
        email=body.email,
        password=body.password,
        role=body.role,
        is_active=body.is_active,
        profile_type_id=body.profile_type_id,
    )
    uow.sync_after_commit(event.event_id)
    return UserCreated(
        **UserOut.model_validate(user).model_dump(), sync_job_id=sync_job_id(event.event_id)
    )


@router.get("/me")
async def read_me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user)


@router.post("/me/password", responses={429: {"description": "too many attempts"}})
async def change_own_password(
    body: ChangeOwnPassword, uow: UowDep, user: CurrentUser, request: Request
) -> SyncAccepted:
    """Change your own password; the current one is checked, throttled like a sign-in."""
    guard, address = sign_in_guard(request), client_address(request)
    await guard.attempt(user.username, address)
    if not await verify_password(user.password_hash, body.current_password):
        raise NotPermitted("the current password is not correct")
    await guard.succeeded(user.username, address)
    updated, event = await service.set_password(uow.session, user.id, body.new_password)
    uow.sync_after_commit(event.event_id)
    return SyncAccepted(sync_job_id=sync_job_id(event.event_id), version=updated.version)


@router.post("/{user_id}/reset-password")
async def reset_password(
    user_id: uuid.UUID, body: ResetPassword, uow: UowDep, _: AdminUser
) -> SyncAccepted:
    updated, event = await service.set_password(uow.session, user_id, body.new_password)
    uow.sync_after_commit(event.event_id)
    return SyncAccepted(sync_job_id=sync_job_id(event.event_id), version=updated.version)


@router.delete("/{user_id}/sign-in-lock", status_code=204)
async def clear_sign_in_lock(
    user_id: uuid.UUID, uow: UowDep, _: AdminUser, request: Request
) -> None:
    """Lift the sign-in throttle of an account (administrators)."""
    user = await service.get(uow.session, user_id)
    await sign_in_guard(request).clear(user.username)


@router.get("/{user_id}")
async def read_user(user_id: uuid.UUID, uow: UowDep, caller: CurrentUser) -> UserOut:
    _self_or_admin(caller, user_id)
    return UserOut.model_validate(await service.get(uow.session, user_id))


@router.patch("/{user_id}")
async def update_user(
    user_id: uuid.UUID, body: UserUpdate, uow: UowDep, caller: CurrentUser
) -> UserChanged:
    _self_or_admin(caller, user_id)
    fields = body.model_fields_set
    if caller.role != "admin" and fields & _ADMIN_FIELDS:
        names = ", ".join(sorted(fields & _ADMIN_FIELDS))
        raise NotPermitted(f"only administrators may change {names}")
    if caller.id == user_id and fields & _NOT_ON_SELF:
        names = ", ".join(sorted(fields & _NOT_ON_SELF))
        raise NotPermitted(f"you may not change your own {names}")
    user, event = await service.update_user(uow.session, user_id, body.model_dump(include=fields))
    if event is not None:
        uow.sync_after_commit(event.event_id)
    return _changed(user, event)


@router.post("/{user_id}/deactivate")
async def deactivate_user(user_id: uuid.UUID, uow: UowDep, caller: AdminUser) -> UserChanged:
    """Sign-in stops on both networks; the account and its history stay."""
    if caller.id == user_id:
        raise NotPermitted("you may not deactivate your own account")
    user, event = await service.update_user(uow.session, user_id, {"is_active": False})
    if event is not None:
        uow.sync_after_commit(event.event_id)
    return _changed(user, event)


@router.delete("/{user_id}")
async def delete_user(user_id: uuid.UUID, uow: UowDep, caller: AdminUser) -> SyncAccepted:
    """The Request Network keeps a tombstone, so a late older change cannot bring it back."""
    if caller.id == user_id:
        raise NotPermitted("you may not delete your own account")
    event = await service.delete_user(uow.session, user_id)
    uow.sync_after_commit(event.event_id)
    return SyncAccepted(sync_job_id=sync_job_id(event.event_id), version=event.version)
