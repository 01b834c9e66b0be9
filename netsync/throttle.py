"""Throttled guessing: every password check counts against its account and its client address.

The counting is ``limits``' fixed-window strategy (a maintained library, not a hand-rolled
scheme) over a store every replica shares: Redis on the Response Network, and the Request
Network's own PostgreSQL there (``PostgresStorage``; it has no Redis, and a sign-in throttle
must not add a dependency it would otherwise not need). Limits are tiers, so the wait grows with
the guessing: by default 10 attempts per account per 15 minutes, then 30 per day, and 100 failed
attempts per client address (an IPv6 address counts as its /64) per 15 minutes. Every attempt is
counted *before* the hash is checked, so a flood of concurrent guesses cannot slip past a limit
and a throttled guess costs no hashing; a successful sign-in clears the account's counters and
gives the address its attempt back: what is limited is guessing, not signing in, and an office
behind one address is not locked out by its own successful sign-ins. The account key is
the lowercased name as typed, whether or not such a user exists: an unknown user gets the same
429.

A throttle store that cannot be reached does not stop sign-in, nor its throttling: this
process's own memory counts instead (per replica; logged and counted in
``netsync_sign_in_throttle_errors``). Keys are hashes of what was typed, so a flood of long names
cannot fill the store.
An administrator clears an account's lock (``clear``) through each API.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import ConnectionPool
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from netsync import metrics
from netsync.errors import NetsyncError
from netsync.redis_conn import connection_pool

log = logging.getLogger(__name__)

DEFAULT_ACCOUNT_LIMITS = "10/15 minutes; 30/day"
DEFAULT_ADDRESS_LIMITS = "100/15 minutes"  # failed attempts only


class TooManyAttempts(NetsyncError):
    status_code = 429
    code = "too_many_attempts"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many sign-in attempts: try again in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


def redis_storage(redis_url: str) -> tuple[Storage, ConnectionPool]:
    """``limits``' Redis storage (redis-py's client) on a pool of our own, which the caller
    disconnects at shutdown; short timeouts, so a Redis outage delays a sign-in by at most a
    second before the check is skipped."""
    pool = connection_pool(redis_url, connect_timeout_s=1.0, socket_timeout_s=1.0)
    storage = RedisStorage(
        "async+redis://",
        wrap_exceptions=True,
        implementation="redispy",
        key_prefix="netsync",
        connection_pool=pool,  # type: ignore[arg-type]
    )
    return storage, pool


@dataclass
class SignInGuard:
    storage: Storage
    app: str
    account_limits: Sequence[RateLimitItem]
    address_limits: Sequence[RateLimitItem]
    #: Separates installations that share one Redis database (``NETSYNC_CRON_NAMESPACE``).
    namespace: str = ""
    _memory: FixedWindowRateLimiter | None = field(default=None, init=False, repr=False)

    @classmethod
    def build(
        cls,
        storage: Storage,
        app: str,
        account: str = DEFAULT_ACCOUNT_LIMITS,
        address: str = DEFAULT_ADDRESS_LIMITS,
        namespace: str = "",
    ) -> SignInGuard:
        return cls(storage, app, parse_many(account), parse_many(address), namespace or "-")

    @property
    def _limiter(self) -> FixedWindowRateLimiter:
        return FixedWindowRateLimiter(self.storage)

    @property
    def _fallback(self) -> FixedWindowRateLimiter:
        """This process's memory, when the shared store cannot be reached."""
        if self._memory is None:
            self._memory = FixedWindowRateLimiter(MemoryStorage())
        return self._memory

    async def attempt(self, username: str, address: str | None) -> None:
        """Before a password check: count it against the account and the address; raises
        ``TooManyAttempts`` if a limit is spent. If the shared store fails, this process's own
        memory counts instead (per replica, but never no limit at all)."""
        try:
            await self._attempt(self._limiter, username, address)
        except StorageError as exc:
            self._unavailable(exc)
            await self._attempt(self._fallback, username, address)

    async def _attempt(
        self, limiter: FixedWindowRateLimiter, username: str, address: str | None
    ) -> None:
        for item in self.address_limits:
            if not await limiter.hit(item, *self._address(address)):
                await self._refuse(limiter, item, "address", self._address(address))
        for item in self.account_limits:
            if not await limiter.hit(item, *self._account(username)):
                await self._refuse(limiter, item, "account", self._account(username))

    def _account(self, username: str) -> tuple[str, ...]:
        # hashed: a key is short whatever was typed (no filling the store with long names)
        digest = hashlib.sha256(username.lower().encode("utf-8", "replace")).hexdigest()[:32]
        return (self.namespace, self.app, "signin-account", digest)

    def _address(self, address: str | None) -> tuple[str, ...]:
        return (self.namespace, self.app, "signin-address", _client_key(address))

    async def _refuse(
        self,
        limiter: FixedWindowRateLimiter,
        item: RateLimitItem,
        scope: str,
        key: tuple[str, ...],
    ) -> NoReturn:
        metrics.SIGN_IN_THROTTLED.labels(self.app, scope).inc()
        log.warning("sign-in throttled", extra={"scope": scope, "limit": str(item)})
        try:
            stats = await limiter.get_window_stats(item, *key)
            retry = max(1, math.ceil(stats.reset_time - time.time()))
        except StorageError:
            retry = 60  # the limit is spent: refuse even if its window cannot be read
        raise TooManyAttempts(retry)

    def _unavailable(self, exc: StorageError) -> None:
        metrics.SIGN_IN_THROTTLE_ERRORS.labels(self.app).inc()
        log.warning("sign-in throttle store unavailable", extra={"error": repr(exc.storage_error)})

    async def succeeded(self, username: str, address: str | None) -> None:
        """A right password: the account's counters start again, and the address gets its
        attempt back (only wrong passwords count against an address)."""
        await self.clear(username)
        try:
            for item in self.address_limits:
                await self._limiter.hit(item, *self._address(address), cost=-1)
        except StorageError as exc:
            self._unavailable(exc)

    async def clear(self, username: str) -> None:
        """Lift an account's lock (an administrator's action, or a successful sign-in)."""
        for limiter in (self._limiter, self._fallback):
            try:
                for item in self.account_limits:
                    await limiter.clear(item, *self._account(username))
            except StorageError as exc:
                self._unavailable(exc)


def _client_key(address: str | None) -> str:
    """The unit an address limit counts: an IPv4 address, an IPv6 /64 (what one host holds)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class PostgresStorage(Storage):
    """``limits``' fixed-window counters in a PostgreSQL table (``sign_in_throttle``).

    One upsert per hit: a window that has expired starts again at ``amount``; otherwise the
    count grows. Rows of expired windows are dead weight only; ``prune`` deletes them.
    """

    STORAGE_SCHEME = ["netsync+postgresql"]  # noqa: RUF012 - limits declares it so

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__("netsync+postgresql://", wrap_exceptions=True)
        self.engine = engine

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (DBAPIError, OSError)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        async with self.engine.begin() as conn:
            count = await conn.scalar(
                text(
                    """
                    INSERT INTO sign_in_throttle AS t (key, count, expires_at)
                    VALUES (:key, :amount, clock_timestamp() + make_interval(secs => :expiry))
                    ON CONFLICT (key) DO UPDATE SET
                        count = CASE WHEN t.expires_at <= clock_timestamp()
                                     THEN :amount ELSE t.count + :amount END,
                        expires_at = CASE WHEN t.expires_at <= clock_timestamp()
                                          THEN excluded.expires_at ELSE t.expires_at END
                    RETURNING count
                    """
                ),
                {"key": key, "amount": amount, "expiry": float(expiry)},
            )
        return int(count or 0)

    async def get(self, key: str) -> int:
        async with self.engine.connect() as conn:
            count = await conn.scalar(
                text(
                    "SELECT count FROM sign_in_throttle"
                    " WHERE key = :key AND expires_at > clock_timestamp()"
                ),
                {"key": key},
            )
        return int(count or 0)

    async def get_expiry(self, key: str) -> float:
        async with self.engine.connect() as conn:
            expires = await conn.scalar(
                text(
                    "SELECT extract(epoch FROM expires_at) FROM sign_in_throttle WHERE key = :key"
                ),
                {"key": key},
            )
        return float(expires) if expires is not None else time.time()

    async def check(self) -> bool:
        async with self.engine.connect() as conn:
            return bool(await conn.scalar(text("SELECT true")))

    async def reset(self) -> int | None:
        async with self.engine.begin() as conn:
            result = await conn.execute(text("DELETE FROM sign_in_throttle"))
        return int(result.rowcount)

    async def clear(self, key: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text("DELETE FROM sign_in_throttle WHERE key = :key"), {"key": key})

    async def prune(self) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                text("DELETE FROM sign_in_throttle WHERE expires_at <= clock_timestamp()")
            )
        return int(result.rowcount)
