"""The password policy: long enough, not guessable from the account, not a known-bad password."""

from __future__ import annotations

MIN_LENGTH = 12
MAX_LENGTH = 128

_COMMON = frozenset(
    {
        "password1234",
        "passwordpassword",
        "123456789012",
        "qwertyuiopas",
        "letmeinletmein",
        "administrator",
        "changemechangeme",
        "iloveyou1234",
        "welcome12345",
    }
)


def password_problems(password: str, *, username: str) -> list[str]:
    """Every rule the password breaks, in words a user can act on; empty when it is fine."""
    problems: list[str] = []
    if len(password) < MIN_LENGTH:
        problems.append(f"must be at least {MIN_LENGTH} characters long")
    if len(password) > MAX_LENGTH:
        problems.append(f"must be at most {MAX_LENGTH} characters long")
    if password.strip() != password:
        problems.append("must not start or end with whitespace")
    if len(set(password)) < 5:
        problems.append("must use at least 5 different characters")
    if username and username.lower() in password.lower():
        problems.append("must not contain the username")
    if password.lower() in _COMMON:
        problems.append("is a commonly used password")
    return problems
