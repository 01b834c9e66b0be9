"""Bearer tokens: short-lived HS256 JWTs that die with a password change.

A token carries the user's ``token_version`` as it was issued; every password change bumps it,
and a token that is behind is refused. A counter, not a time: replicas whose clocks disagree
cannot let a token issued just before a change outlive it (nor refuse one issued just after).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

_ALGORITHM = "HS256"


@dataclass(frozen=True)
class TokenClaims:
    user_id: uuid.UUID
    #: The user's ``token_version`` when the token was issued: a lower one is revoked.
    token_version: int


def create_access_token(
    *, user_id: uuid.UUID, token_version: int, secret: str, minutes: int
) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "ver": token_version,
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
            options={"require": ["sub", "exp", "iat", "ver"]},
        )
        return TokenClaims(uuid.UUID(claims["sub"]), int(claims["ver"]))
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
