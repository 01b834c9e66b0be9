"""``POST /api/v1/auth/token``: the OAuth2 password flow."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from app.auth.tokens import create_access_token
from app.deps import SettingsDep, UowDep
from app.users.service import get_by_username
from netsync.errors import ERROR_RESPONSES, NotAuthenticated
from netsync.passwords import verify_password

router = APIRouter(prefix="/api/v1/auth", tags=["auth"], responses=ERROR_RESPONSES)


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int


@router.post("/token")
async def issue_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], uow: UowDep, settings: SettingsDep
) -> Token:
    user = await get_by_username(uow.session, form.username)
    ok = await verify_password(user.password_hash if user else None, form.password)
    if user is None or not ok or not user.is_active:
        raise NotAuthenticated("invalid username or password")
    token = create_access_token(
        user_id=user.id,
        password_changed_at=user.password_changed_at,
        secret=settings.jwt_secret(),
        minutes=settings.access_token_minutes,
    )
    return Token(access_token=token, expires_in=settings.access_token_minutes * 60)
