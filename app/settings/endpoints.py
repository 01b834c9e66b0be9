"""``/api/v1/settings``: dotted keys with JSON values. Admins write, anyone signed in reads.
Every change answers the id of the sync job that carries it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from app.deps import AdminUser, CurrentUser, UowDep
from app.fields import Limit, Offset, Page, Text
from app.outbox.models import OutboxEvent
from app.queue.client import sync_job_id
from app.settings import service
from app.settings.models import Setting
from app.settings.schemas import (
    KEY_DESCRIPTION,
    SettingChanged,
    SettingCreate,
    SettingOut,
    SettingUpdate,
)
from app.users.schemas import SyncAccepted
from exchange.entities import SETTING_KEY_PATTERN
from netsync.errors import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1/settings", tags=["settings"], responses=ERROR_RESPONSES)

KeyPath = Annotated[
    str,
    Path(min_length=1, max_length=200, pattern=SETTING_KEY_PATTERN, description=KEY_DESCRIPTION),
]
Prefix = Annotated[
    Text | None, Query(max_length=200, description="Only keys starting with this, e.g. `mail.`.")
]


def _changed(setting: Setting, event: OutboxEvent | None) -> SettingChanged:
    return SettingChanged(
        **SettingOut.model_validate(setting).model_dump(),
        sync_job_id=sync_job_id(event.event_id) if event is not None else None,
    )


@router.get("")
async def list_settings(
    uow: UowDep, _: CurrentUser, prefix: Prefix = None, limit: Limit = 50, offset: Offset = 0
) -> Page[SettingOut]:
    rows, total = await service.list_settings(
        uow.session, prefix=prefix, limit=limit, offset=offset
    )
    items = [SettingOut.model_validate(r) for r in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_setting(body: SettingCreate, uow: UowDep, _: AdminUser) -> SettingChanged:
    setting, event = await service.create_setting(
        uow.session, key=body.key, value=body.value, description=body.description
    )
    uow.sync_after_commit(event.event_id)
    return _changed(setting, event)


@router.get("/{key}")
async def read_setting(key: KeyPath, uow: UowDep, _: CurrentUser) -> SettingOut:
    return SettingOut.model_validate(await service.get(uow.session, key))


@router.put("/{key}")
async def update_setting(
    key: KeyPath, body: SettingUpdate, uow: UowDep, _: AdminUser
) -> SettingChanged:
    changes = body.model_dump(include=body.model_fields_set | {"value"})
    setting, event = await service.update_setting(uow.session, key, changes)
    if event is not None:
        uow.sync_after_commit(event.event_id)
    return _changed(setting, event)


@router.delete("/{key}")
async def delete_setting(key: KeyPath, uow: UowDep, _: AdminUser) -> SyncAccepted:
    event = await service.delete_setting(uow.session, key)
    uow.sync_after_commit(event.event_id)
    return SyncAccepted(sync_job_id=sync_job_id(event.event_id), version=event.version)
