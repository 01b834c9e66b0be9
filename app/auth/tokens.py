"""Bearer tokens: short-lived HS256 JWTs that die with a password change."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

_ALGORITHM = "HS256"


@dataclass(frozen=True)
class TokenClaims:
    user_id: uuid.UUID
    #: When the password was last changed (ms) as the token was issued: older tokens are revoked.
    password_changed_at: int


def create_access_token(
    *, user_id: uuid.UUID, password_changed_at: datetime, secret: str, minutes: int
) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "pwd": int(password_changed_at.timestamp() * 1000),
        "iat": now,
        "exp": now + timedelta(minutes=minutes),
        "aud": "netsync-response",
    }
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def decode_access_token(token: str, secret: str) -> TokenClaims | None:
    """The token's claims, or ``None`` for anything expired, forged or malformed."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            audience="netsync-response",
            options={"require": ["sub", "exp", "iat", "pwd"]},
        )
        return TokenClaims(uuid.UUID(claims["sub"]), int(claims["pwd"]))
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
