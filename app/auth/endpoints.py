"""``POST /api/v1/auth/token``: the OAuth2 password flow."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from app.auth.tokens import create_access_token
from app.deps import SettingsDep, UowDep, client_address, sign_in_guard
from app.users import service
from app.users.service import get_by_username
from netsync import metrics
from netsync.errors import ERROR_RESPONSES, NotAuthenticated
from netsync.passwords import hash_password, needs_rehash, verify_password

#: The longest username the API stores (``users.username``).
MAX_USERNAME = 150

router = APIRouter(prefix="/api/v1/auth", tags=["auth"], responses=ERROR_RESPONSES)


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int


@router.post(
    "/token",
    responses={429: {"description": "too many attempts (see Retry-After)"}, 503: {}},
)
async def issue_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    uow: UowDep,
    settings: SettingsDep,
    request: Request,
) -> Token:
    """Sign in. Throttled per account and per client address (429 with ``Retry-After``); a
    legacy or outdated hash is replaced by a fresh argon2id one, which syncs like any change."""
    guard, address = sign_in_guard(request), client_address(request)
    if len(form.username) > MAX_USERNAME:  # no user has such a name: the same answer
        raise NotAuthenticated("invalid username or password")
    await guard.attempt(form.username, address)
    # the lookup holds a connection only for itself, not while waiting for a hashing slot
    async with request.app.state.sessionmaker() as lookup:
        user = await get_by_username(lookup, form.username)
    ok = await verify_password(
        user.password_hash if user else None,
        form.password,
        allowed=user is not None and user.is_active,
    )
    if user is None or not ok or not user.is_active:
        raise NotAuthenticated("invalid username or password")
    await guard.succeeded(form.username, address)
    if needs_rehash(user.password_hash):  # only now: every other check passed
        new_hash = await hash_password(form.password)
        event = await service.rehash(uow.session, user.id, user.password_hash, new_hash)
        if event is not None:
            metrics.SIGN_IN_REHASHED.inc()
            uow.sync_after_commit(event.event_id)
    token = create_access_token(
        user_id=user.id,
        token_version=user.token_version,
        secret=settings.jwt_secret(),
        minutes=settings.access_token_minutes,
    )
    return Token(access_token=token, expires_in=settings.access_token_minutes * 60)
