"""Password hashing: argon2id for new hashes, legacy bcrypt (``$2b$``) still verifies.

Hashing costs tens of milliseconds and 64 MiB per argon2id call, so it runs in a small dedicated
thread pool, one thread per core: the event loop stays free and memory stays bounded however many
requests arrive at once. Plaintext passwords never leave the request that sets them.
"""

from __future__ import annotations

import asyncio
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()
# One thread per usable core (``NETSYNC_HASH_THREADS`` overrides it where a container's CPU quota
# is smaller than the cores it can see): each argon2id call holds 64 MiB while it runs.
_THREADS = int(os.environ.get("NETSYNC_HASH_THREADS", "0")) or len(os.sched_getaffinity(0))
_pool = ThreadPoolExecutor(max_workers=max(1, _THREADS), thread_name_prefix="hash")


@functools.cache
def _dummy_hash() -> str:
    """A real hash of a random password: verifying against it when a user does not exist keeps
    the response time the same, so timing does not reveal which usernames exist."""
    return _hasher.hash(os.urandom(16).hex())


def hash_password_sync(password: str) -> str:
    return _hasher.hash(password)


def verify_password_sync(password_hash: str, password: str) -> bool:
    if password_hash.startswith(("$2b$", "$2a$", "$2y$")):
        try:
            return bcrypt.checkpw(password.encode(), password_hash.encode())
        except ValueError:
            return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def hash_password(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_pool, hash_password_sync, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Verify in the hashing pool; a missing user still costs one verification."""
    loop = asyncio.get_running_loop()
    if password_hash is None:
        await loop.run_in_executor(_pool, verify_password_sync, _dummy_hash(), password)
        return False
    return await loop.run_in_executor(_pool, verify_password_sync, password_hash, password)
