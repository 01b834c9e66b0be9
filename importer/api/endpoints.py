"""The Request API's read endpoints: synced users, settings, profile types and the sync itself.

Tombstoned rows (entities deleted on the Response Network) are never listed: the row stays only so
that an older change arriving late cannot bring the entity back. Lists are paginated with
``limit``/``offset`` and ordered by a stable key.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel
from sqlalchemy import Select, func, select

from importer.api.auth import Operator, Reader
from importer.api.schemas import (
    GapOut,
    GenerationOut,
    Limit,
    Offset,
    Page,
    ProfileTypeOut,
    QuarantineEntry,
    SettingOut,
    StreamStatus,
    SyncStatus,
    UserOut,
    page_of,
)
from importer.db import RequestSession, RequestSessionMaker
from importer.models import (
    QuarantinedFile,
    SyncedProfileType,
    SyncedSetting,
    SyncedUser,
    SyncGeneration,
    SyncStreamStats,
)
from importer.views import open_gaps, summarise
from netsync.errors import NotFound, NotPermitted
from netsync.text import Text

_IGNORED = "not_an_export_name"


async def get_session(request: Request) -> AsyncIterator[RequestSession]:
    maker: RequestSessionMaker = request.app.state.sessionmaker
    async with maker() as session:
        yield session


SessionDep = Annotated[RequestSession, Depends(get_session)]
router = APIRouter(prefix="/api/v1")


async def _page(
    session: RequestSession, query: Select[Any], limit: int, offset: int
) -> tuple[list[Any], int]:
    total = await session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = (await session.scalars(query.limit(limit).offset(offset))).all()
    return list(rows), total or 0


async def _listing(
    session: RequestSession,
    model: type[SyncedUser | SyncedSetting | SyncedProfileType],
    schema: type[BaseModel],
    order: Sequence[Any],
    limit: int,
    offset: int,
) -> BaseModel:
    """One page of a synced entity's live rows (never a tombstone), in a stable order."""
    query = select(model).where(model.deleted.is_(False)).order_by(*order, model.id)
    rows, total = await _page(session, query, limit, offset)
    items = [schema.model_validate(r) for r in rows]
    return page_of(schema)(items=items, total=total, limit=limit, offset=offset)


@router.get("/users", tags=["users"], response_model=page_of(UserOut))
async def list_users(
    session: SessionDep, _: Operator, limit: Limit = 50, offset: Offset = 0
) -> BaseModel:
    return await _listing(
        session, SyncedUser, UserOut, [func.lower(SyncedUser.username)], limit, offset
    )


@router.get("/users/me", tags=["users"], response_model=UserOut)
async def me(session: SessionDep, principal: Reader) -> BaseModel:
    if principal.user_id is None:
        raise NotFound("the service token is not a user")
    return await get_user(principal.user_id, session, principal)


@router.get("/users/{user_id}", tags=["users"], response_model=UserOut)
async def get_user(user_id: uuid.UUID, session: SessionDep, principal: Reader) -> BaseModel:
    if not principal.is_operator and principal.user_id != user_id:
        raise NotPermitted("users read only themselves")
    user = await session.scalar(
        select(SyncedUser).where(SyncedUser.id == user_id, SyncedUser.deleted.is_(False))
    )
    if user is None:
        raise NotFound("no such user")
    return UserOut.model_validate(user)


@router.get("/settings", tags=["settings"], response_model=page_of(SettingOut))
async def list_settings(
    session: SessionDep, _: Reader, limit: Limit = 50, offset: Offset = 0
) -> BaseModel:
    return await _listing(session, SyncedSetting, SettingOut, [SyncedSetting.key], limit, offset)


@router.get("/settings/{key}", tags=["settings"], response_model=SettingOut)
async def get_setting(
    key: Annotated[Text, Path(min_length=1, max_length=200)], session: SessionDep, _: Reader
) -> BaseModel:
    setting = await session.scalar(
        select(SyncedSetting)
        .where(SyncedSetting.key == key, SyncedSetting.deleted.is_(False))
        .order_by(SyncedSetting.changed_at.desc())
        .limit(1)
    )
    if setting is None:
        raise NotFound("no such setting")
    return SettingOut.model_validate(setting)


@router.get("/profile-types", tags=["profile types"], response_model=page_of(ProfileTypeOut))
async def list_profile_types(
    session: SessionDep, _: Reader, limit: Limit = 50, offset: Offset = 0
) -> BaseModel:
    return await _listing(
        session, SyncedProfileType, ProfileTypeOut, [SyncedProfileType.name], limit, offset
    )


@router.get(
    "/profile-types/{profile_type_id}", tags=["profile types"], response_model=ProfileTypeOut
)
async def get_profile_type(profile_type_id: uuid.UUID, session: SessionDep, _: Reader) -> BaseModel:
    row = await session.scalar(
        select(SyncedProfileType).where(
            SyncedProfileType.id == profile_type_id, SyncedProfileType.deleted.is_(False)
        )
    )
    if row is None:
        raise NotFound("no such profile type")
    return ProfileTypeOut.model_validate(row)


@router.get("/sync/status", tags=["sync"])
async def sync_status(session: SessionDep, _: Operator) -> SyncStatus:
    """The Response database's generations seen (a new one follows each restore there); per
    stream: the last applied file and the lag behind its export (from the counters the
    applying transactions keep, never a scan of the ledger); open sequence gaps; how many files
    were quarantined, and how many names were ignored as not ours."""
    now = datetime.now(UTC)
    generations = (
        await session.scalars(
            select(SyncGeneration).order_by(SyncGeneration.generation.desc()).limit(10)
        )
    ).all()
    rows = await session.execute(
        select(
            SyncStreamStats.stream,
            SyncStreamStats.generation,
            SyncStreamStats.last_seq,
            SyncStreamStats.last_exported_at,
            SyncStreamStats.files_applied,
            SyncStreamStats.last_applied_at,
        ).order_by(SyncStreamStats.stream)
    )
    streams = [
        StreamStatus(
            stream=stream,
            generation=generation,
            last_applied_seq=seq,
            files_applied=files,
            last_applied_at=applied_at,
            last_exported_at=exported_at,
            lag_s=round((now - exported_at).total_seconds(), 3),
        )
        for stream, generation, seq, exported_at, files, applied_at in rows.all()
    ]
    gaps = await open_gaps(session)
    stats = summarise(gaps, now)
    ignored = QuarantinedFile.reason == _IGNORED
    counted = await session.execute(
        select(
            func.count().filter(~ignored).label("quarantined"),
            func.count().filter(ignored).label("ignored"),
        )
    )
    quarantined, ignored_names = counted.one()
    return SyncStatus(
        generation=generations[0].generation if generations else 0,
        generations=[
            GenerationOut(
                generation=g.generation, first_seen_at=g.first_seen_at, first_file=g.first_file
            )
            for g in generations
        ],
        streams=streams,
        open_gaps=[
            GapOut(
                stream=g.stream,
                generation=g.generation,
                first_seq=g.first_seq,
                last_seq=g.last_seq,
                missing=g.missing,
                first_seen_at=g.first_seen_at,
                age_s=round(g.age_s(now), 3),
            )
            for g in gaps
        ],
        missing_files=stats.missing_files,
        oldest_gap_age_s=stats.oldest_age_s,
        files_quarantined=quarantined,
        files_ignored=ignored_names,
    )


@router.get("/sync/quarantine", tags=["sync"])
async def quarantine(
    session: SessionDep,
    _: Operator,
    limit: Limit = 50,
    offset: Offset = 0,
    reason: Annotated[Text | None, Query(max_length=32)] = None,
) -> Page[QuarantineEntry]:
    """Every refused file with its reason, newest first (``reason`` filters)."""
    query: Select[Any] = select(QuarantinedFile).order_by(QuarantinedFile.id.desc())
    if reason is not None:
        query = query.where(QuarantinedFile.reason == reason)
    rows, total = await _page(session, query, limit, offset)
    items = [QuarantineEntry.model_validate(r) for r in rows]
    return Page[QuarantineEntry](items=items, total=total, limit=limit, offset=offset)
