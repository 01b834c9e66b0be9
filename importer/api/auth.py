"""Who may read the Request API: synced users with a bearer token, or machines with a service token.

``POST /api/v1/auth/login`` checks the synced password hash and returns a short-lived HS256 token
signed with ``NETSYNC_REQUEST_SECRET_KEY``. The token carries a fingerprint of the password hash
it was issued against: when a new hash arrives from the Response Network (a password change or
reset), older tokens stop working, as they do there. Each request reloads the user, so a user
deactivated or deleted on the Response Network loses access as soon as that change is applied.

Machines (dashboards, monitoring) use the optional static ``NETSYNC_REQUEST_SERVICE_TOKEN``.
What each may read: any signed-in user reads settings, profile types and themselves; administrators
and the service token also read every user and the state of the sync.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from importer.db import RequestSession, RequestSessionMaker
from importer.models import SyncedUser
from netsync.errors import NotAuthenticated, NotPermitted

_ALGORITHM = "HS256"
_AUDIENCE = "netsync-request"


def hash_fingerprint(password_hash: str | None) -> str:
    """Changes whenever the synced hash changes; reveals nothing usable about it."""
    return hashlib.sha256((password_hash or "").encode()).hexdigest()[:16]


def create_token(user: SyncedUser, *, secret: str, minutes: int) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user.id),
        "pwd": hash_fingerprint(user.password_hash),
        "iat": now,
        "exp": now + timedelta(minutes=minutes),
        "aud": _AUDIENCE,
    }
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def _decode(token: str, secret: str) -> tuple[uuid.UUID, str] | None:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            audience=_AUDIENCE,
            options={"require": ["sub", "exp", "iat", "pwd"]},
        )
        return uuid.UUID(str(claims["sub"])), str(claims["pwd"])
    except (jwt.PyJWTError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class Principal:
    kind: Literal["user", "service"]
    user_id: uuid.UUID | None = None
    role: str | None = None

    @property
    def is_operator(self) -> bool:
        """Reads every user and the sync's state: the service token or an administrator."""
        return self.kind == "service" or self.role == "admin"


_bearer = HTTPBearer(auto_error=False, description="A login token or the service token")


async def _load_user(maker: RequestSessionMaker, user_id: uuid.UUID) -> SyncedUser | None:
    session: RequestSession
    async with maker() as session:
        return await session.scalar(select(SyncedUser).where(SyncedUser.id == user_id))


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise NotAuthenticated()
    token = credentials.credentials
    service: str | None = request.app.state.service_token
    if service is not None and hmac.compare_digest(token.encode(), service.encode()):
        return Principal("service")
    decoded = _decode(token, request.app.state.token_secret)
    if decoded is None:
        raise NotAuthenticated("invalid or expired token")
    user_id, fingerprint = decoded
    user = await _load_user(request.app.state.sessionmaker, user_id)
    if (
        user is None
        or user.deleted
        or not user.is_active
        or not hmac.compare_digest(hash_fingerprint(user.password_hash), fingerprint)
    ):
        raise NotAuthenticated("invalid or expired token")
    return Principal("user", user.id, user.role)


def operator(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_operator:
        raise NotPermitted("administrators and the service token only")
    return principal


Reader = Annotated[Principal, Depends(current_principal)]
Operator = Annotated[Principal, Depends(operator)]
