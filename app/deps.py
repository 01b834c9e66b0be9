"""Request dependencies: the unit of work, the caller, and the job queue.

The unit of work owns the transaction: it commits when the endpoint returns and rolls back when
it raises, before the response is sent (``scope="function"``), so a client never hears of a change
that did not commit. Sync jobs registered during the request are enqueued only after the commit,
and a Redis failure at that point is logged, not raised: the change is safe in the outbox and the
worker's sweeper exports it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from app.auth.tokens import decode_access_token
from app.config import ResponseSettings
from app.db import ResponseSession, ResponseSessionMaker
from app.queue.client import JobQueue
from app.users.models import User
from netsync.errors import NotAuthenticated, NotPermitted
from netsync.throttle import SignInGuard

log = logging.getLogger(__name__)

_bearer = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


@dataclass
class UnitOfWork:
    session: ResponseSession
    sync_events: list[uuid.UUID] = field(default_factory=list)

    def sync_after_commit(self, event_id: uuid.UUID) -> None:
        self.sync_events.append(event_id)


def sign_in_guard(request: Request) -> SignInGuard:
    guard: SignInGuard = request.app.state.sign_in
    return guard


def client_address(request: Request) -> str | None:
    """The caller's address (behind a proxy: run uvicorn with ``--proxy-headers``)."""
    return request.client.host if request.client else None


def get_settings(request: Request) -> ResponseSettings:
    settings: ResponseSettings = request.app.state.settings
    return settings


def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


async def get_uow(request: Request) -> AsyncIterator[UnitOfWork]:
    maker: ResponseSessionMaker = request.app.state.sessionmaker
    async with maker() as session:
        async with session.begin():
            uow = UnitOfWork(session)
            yield uow
        queue = get_queue(request)
        for event_id in uow.sync_events:
            await queue.enqueue_sync(event_id)


UowDep = Annotated[UnitOfWork, Depends(get_uow, scope="function")]
SettingsDep = Annotated[ResponseSettings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]


async def authenticate(
    session: ResponseSession, settings: ResponseSettings, token: str | None
) -> User:
    """The user a bearer token stands for, or ``NotAuthenticated``."""
    if not token:
        raise NotAuthenticated()
    claims = decode_access_token(token, settings.jwt_secret())
    if claims is None:
        raise NotAuthenticated("invalid or expired token")
    user = await session.get(User, claims.user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("invalid or expired token")
    if claims.token_version != user.token_version:
        raise NotAuthenticated("token revoked by a password change")
    return user


async def get_current_user(
    uow: UowDep, settings: SettingsDep, token: Annotated[str | None, Depends(_bearer)]
) -> User:
    return await authenticate(uow.session, settings, token)


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> User:
    if user.role != "admin":
        raise NotPermitted("administrators only")
    return user


AdminUser = Annotated[User, Depends(get_admin)]


async def get_admin_briefly(
    request: Request, settings: SettingsDep, token: Annotated[str | None, Depends(_bearer)]
) -> User:
    """An administrator, checked in a session of its own that ends at once: for endpoints that
    stream a long body and must not hold a transaction (and its locks) open while they read."""
    async with request.app.state.sessionmaker() as session:
        user = await authenticate(session, settings, token)
    if user.role != "admin":
        raise NotPermitted("administrators only")
    return user


BriefAdmin = Annotated[User, Depends(get_admin_briefly)]
