"""``/api/v1/profile-types``: named permission sets users reference. Admins write, anyone
signed in reads. Every change answers the id of the sync job that carries it."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from app.deps import AdminUser, CurrentUser, UowDep
from app.fields import Limit, Offset, Page
from app.profile_types import service
from app.profile_types.schemas import (
    ProfileTypeChanged,
    ProfileTypeCreate,
    ProfileTypeOut,
    ProfileTypeUpdate,
)
from app.queue.client import sync_job_id
from app.users.schemas import SyncAccepted
from netsync.errors import ERROR_RESPONSES

router = APIRouter(
    prefix="/api/v1/profile-types", tags=["profile types"], responses=ERROR_RESPONSES
)


@router.get("")
async def list_profile_types(
    uow: UowDep, _: CurrentUser, limit: Limit = 50, offset: Offset = 0
) -> Page[ProfileTypeOut]:
    rows, total = await service.list_profile_types(uow.session, limit=limit, offset=offset)
    items = [ProfileTypeOut.model_validate(r) for r in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_profile_type(
    body: ProfileTypeCreate, uow: UowDep, _: AdminUser
) -> ProfileTypeChanged:
    profile_type, event = await service.create_profile_type(
        uow.session, name=body.name, description=body.description, permissions=body.permissions
    )
    uow.sync_after_commit(event.event_id)
    return ProfileTypeChanged(
        **ProfileTypeOut.model_validate(profile_type).model_dump(),
        sync_job_id=sync_job_id(event.event_id),
    )


@router.get("/{profile_type_id}")
async def read_profile_type(
    profile_type_id: uuid.UUID, uow: UowDep, _: CurrentUser
) -> ProfileTypeOut:
    return ProfileTypeOut.model_validate(await service.get(uow.session, profile_type_id))


@router.patch("/{profile_type_id}")
async def update_profile_type(
    profile_type_id: uuid.UUID, body: ProfileTypeUpdate, uow: UowDep, _: AdminUser
) -> ProfileTypeChanged:
    changes = body.model_dump(include=body.model_fields_set)
    profile_type, event = await service.update_profile_type(uow.session, profile_type_id, changes)
    if event is not None:
        uow.sync_after_commit(event.event_id)
    return ProfileTypeChanged(
        **ProfileTypeOut.model_validate(profile_type).model_dump(),
        sync_job_id=sync_job_id(event.event_id) if event else None,
    )


@router.delete("/{profile_type_id}")
async def delete_profile_type(
    profile_type_id: uuid.UUID, uow: UowDep, _: AdminUser
) -> SyncAccepted:
    event = await service.delete_profile_type(uow.session, profile_type_id)
    uow.sync_after_commit(event.event_id)
    return SyncAccepted(sync_job_id=sync_job_id(event.event_id), version=event.version)
