"""``NETSYNC_REDIS_URL`` in its Sentinel form: what it means, what it refuses, and that no
password in it reaches a message. (The failover itself: ``tests/system/test_failover_redis.py``.)"""

from __future__ import annotations

import pytest
from redis.asyncio import ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool

from app.config import ResponseSettings
from netsync.config import ConfigurationError
from netsync.redis_conn import (
    RedisURLError,
    SentinelTarget,
    connection_pool,
    describe,
    parse_sentinel,
)


def test_a_sentinel_url_names_the_sentinels_the_service_the_database_and_both_passwords() -> None:
    target = parse_sentinel(
        "redis+sentinel://app:p%40ss@s1:26379,s2:26380,[::1]/netsync/3"
        "?sentinel_password=sp&sentinel_username=watch"
    )
    assert target == SentinelTarget(
        sentinels=(("s1", 26379), ("s2", 26380), ("::1", 26379)),
        service="netsync",
        db=3,
        username="app",
        password="p@ss",
        sentinel_username="watch",
        sentinel_password="sp",
    )
    assert parse_sentinel("rediss+sentinel://:pw@s1/mymaster").ssl
    plain = parse_sentinel("redis+sentinel://s1:26379/mymaster")
    assert (plain.password, plain.sentinel_password, plain.db) == (None, None, 0)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel:///mymaster", "at least one Sentinel"),
        ("redis+sentinel://s1:26379", "path is /<service name>"),
        ("redis+sentinel://s1:26379/a/b/c", "path is /<service name>"),
        ("redis+sentinel://s1:26379/mymaster/x", "database in a Sentinel URL is a number"),
        ("redis+sentinel://s1:99999/mymaster", "host:port"),
        ("redis+sentinel://s1/mymaster?password=x", "unknown Sentinel URL parameters: password"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_at_start_and_says_why(
    url: str, complaint: str
) -> None:
    with pytest.raises(RedisURLError, match=complaint):
        parse_sentinel(url)
    secret = url.replace("://", "://:hunter2secret@", 1)
    with pytest.raises(ConfigurationError, match="NETSYNC_REDIS_URL") as refused:
        _ = ResponseSettings(redis_url=secret).redis_dsn
    assert "hunter2secret" not in str(refused.value)


def test_describe_hides_every_password() -> None:
    url = "redis+sentinel://app:topsecret@s1,s2/netsync/0?sentinel_password=alsosecret"
    shown = describe(url)
    assert "topsecret" not in shown
    assert "alsosecret" not in shown
    assert shown.startswith("redis+sentinel://app:***@s1,s2/netsync/0")
    assert describe("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert describe("redis://host:6379/0") == "redis://host:6379/0"


def test_each_form_gets_its_own_pool_and_neither_connects_before_its_first_command() -> None:
    one = connection_pool("redis://127.0.0.1:1/0", connect_timeout_s=1, socket_timeout_s=1)
    assert type(one) is ConnectionPool
    group = connection_pool(
        "redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/netsync/2?sentinel_password=sp",
        connect_timeout_s=1,
        socket_timeout_s=1,
    )
    assert isinstance(group, SentinelConnectionPool)
    assert group.service_name == "netsync"
    assert group.connection_kwargs["password"] == "pw"
    assert group.connection_kwargs["db"] == 2
    sentinels = group.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    # the Sentinels get their own password, which arq's sentinel settings never pass on
    assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {"sp"}
