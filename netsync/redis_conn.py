"""Connections to Redis from ``NETSYNC_REDIS_URL``, in either form: one server, or a group of
servers watched by Redis Sentinel.

Every Redis client netsync makes (the API's queue client and sign-in throttle, the workers' arq
pool with its wake-up listener and heartbeats, the command line) takes its pool from
``connection_pool``, so each follows a Sentinel failover the same way: a connection asks the
Sentinels where the primary is whenever it (re)connects, and a connection that finds its server
demoted (``READONLY``) is dropped and made again. Retrying is the caller's choice (the workers
retry forever while running, ``jobs.shutdown.OutageRetry``; the API gives up in a second and
leaves the change to the outbox sweeper).

The Sentinel form, with the Redis credentials in the user-info part and the Sentinels' own in the
query (Sentinels often have a password of their own, or none: arq's ``RedisSettings(sentinel=True)``
never gives them one, which is why this module builds the pool itself)::

    redis+sentinel://[[user]:password@]host1:26379,host2:26379/<service>[/<db>]
        [?sentinel_password=...&sentinel_username=...]

``rediss+sentinel://`` uses TLS for the Redis servers and the Sentinels. A URL is never logged
whole: ``describe`` gives the form without its secrets.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff


class _AskingConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that asks the Sentinels again on every retry.

    redis-py's connects to the address the Sentinels gave with the connection's own retry, so a
    connection whose retry is endless (the workers') keeps knocking on a dead primary's address
    and never learns of the promotion (redis/redis-py#3874). Here one address gets one try; the
    retry around it (``SentinelManagedConnection.connect``) asks the Sentinels each time.
    """

    async def connect_to(self, address: tuple[str, int]) -> None:
        retry, self.retry = self.retry, Retry(NoBackoff(), 0)
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self.retry = retry


class _AskingSSLConnection(_AskingConnection, SentinelManagedSSLConnection):
    pass


SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
DEFAULT_SENTINEL_PORT = 26379


class RedisURLError(ValueError):
    """``NETSYNC_REDIS_URL`` cannot be understood; the message never quotes a password."""


@dataclass(frozen=True)
class SentinelTarget:
    """Where a Sentinel-watched primary is found, and the credentials on each side."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: bool = False


def is_sentinel(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in SENTINEL_SCHEMES


def parse_sentinel(url: str) -> SentinelTarget:
    """The parts of a ``redis+sentinel://`` URL; ``RedisURLError`` names what is wrong."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise RedisURLError(f"not a Sentinel URL (scheme {parts.scheme!r})")
    credentials, _, hosts = parts.netloc.rpartition("@")
    sentinels = tuple(_host_port(h) for h in hosts.split(",") if h)
    if not sentinels:
        raise RedisURLError("a Sentinel URL names at least one Sentinel: host:port[,host:port]")
    path = [p for p in parts.path.split("/") if p]
    if not 1 <= len(path) <= 2:
        raise RedisURLError("a Sentinel URL's path is /<service name>[/<database number>]")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise RedisURLError("the database in a Sentinel URL is a number")
        db = int(path[1])
    username, password = _credentials(credentials)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"sentinel_username", "sentinel_password"}
    if unknown:
        raise RedisURLError(f"unknown Sentinel URL parameters: {', '.join(sorted(unknown))}")
    return SentinelTarget(
        sentinels=sentinels,
        service=urllib.parse.unquote(path[0]),
        db=db,
        username=username,
        password=password,
        sentinel_username=_one(query, "sentinel_username"),
        sentinel_password=_one(query, "sentinel_password"),
        ssl=SENTINEL_SCHEMES[parts.scheme],
    )


def _host_port(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not colon:
        host, port = text, str(DEFAULT_SENTINEL_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisURLError(
            "a Sentinel address is host:port (percent-encode '@', ':', '/', ',' in passwords)"
        )
    return host, int(port)


def _credentials(text: str) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    user, colon, password = text.partition(":")
    if not colon:  # redis://secret@host is a password alone, as redis-py reads it
        return None, urllib.parse.unquote(user)
    return urllib.parse.unquote(user) or None, urllib.parse.unquote(password)


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def describe(url: str) -> str:
    """The URL with its passwords replaced, fit for a log line or an error message."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, hosts = netloc.rpartition("@")
        user = credentials.partition(":")[0] if ":" in credentials else ""
        netloc = f"{user}:***@{hosts}"
    query = urllib.parse.urlencode(
        [
            (k, "***" if "password" in k else v)
            for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ]
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def connection_pool(
    url: str,
    *,
    connect_timeout_s: float,
    socket_timeout_s: float | None,
    retry: Retry | None = None,
    retry_on_error: list[type[Exception]] | None = None,
    health_check_interval: int = 0,
) -> ConnectionPool:
    """A pool for ``url``; nothing connects until the first command."""
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": socket_timeout_s,
        "health_check_interval": health_check_interval,
    }
    if retry is not None:
        options["retry"] = retry
    if retry_on_error is not None:
        options["retry_on_error"] = retry_on_error
    if not is_sentinel(url):
        return ConnectionPool.from_url(url, **options)
    target = parse_sentinel(url)
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": socket_timeout_s if socket_timeout_s is not None else connect_timeout_s,
        "username": target.sentinel_username,
        "password": target.sentinel_password,
    }
    if target.ssl:
        sentinel_options["ssl"] = True
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    connection_class = _AskingSSLConnection if target.ssl else _AskingConnection
    return SentinelConnectionPool(  # type: ignore[no-untyped-call]
        target.service,
        sentinel,
        connection_class=connection_class,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )
