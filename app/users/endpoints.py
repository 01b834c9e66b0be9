"""``/api/v1/users``: accounts and passwords. Every change answers the id of its sync job."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from app.deps import AdminUser, CurrentUser, UowDep
from app.users import service
from app.users.schemas import (
    ChangeOwnPassword,
    ResetPassword,
    SyncAccepted,
    UserCreate,
    UserCreated,
    UserOut,
)
from jobs.client import sync_job_id
from netsync.errors import ERROR_RESPONSES, NotPermitted
from netsync.passwords import verify_password

router = APIRouter(prefix="/api/v1/users", tags=["users"], responses=ERROR_RESPONSES)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, uow: UowDep, _: AdminUser) -> UserCreated:
    user, event = await service.create_user(
        uow.session,
        username=body.username,
        email=body.email,
        password=body.password,
        role=body.role,
        is_active=body.is_active,
    )
    uow.sync_after_commit(event.event_id)
    return UserCreated(
        **UserOut.model_validate(user).model_dump(), sync_job_id=sync_job_id(event.event_id)
    )


@router.get("/me")
async def read_me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user)


@router.post("/me/password")
async def change_own_password(
    body: ChangeOwnPassword, uow: UowDep, user: CurrentUser
) -> SyncAccepted:
    if not await verify_password(user.password_hash, body.current_password):
        raise NotPermitted("the current password is not correct")
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
