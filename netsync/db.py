"""Engine construction shared by both networks; each network declares its own session type.

``app.db.ResponseSession`` and ``importer.db.RequestSession`` are distinct subclasses of
``AsyncSession``, so mypy rejects handing one network's session to the other network's code.
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from netsync.config import to_asyncpg_url

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def naming_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    application_name: str = "netsync",
    pre_ping: bool = True,
) -> AsyncEngine:
    """Every engine of both networks. ``hide_parameters``: a failed statement's message names
    the statement, never its values, so a database error during a password change cannot put
    a hash (or anything else a row holds) into a log line or an exception.

    ``pre_ping`` tests each connection with a round trip when it leaves the pool, so that a
    connection the server dropped (a restart, a failover, an idle timeout of the server or a
    pooler) is replaced before anyone sees an error. The APIs and the workers keep it: a
    request should not fail for that, and a sync job whose "published" mark failed would
    publish its file a second time. The importer turns it off: it checks a connection out for
    every applying transaction, the ping is one round trip of about seven, and a transaction
    that fails on a dropped connection is retried whole with the scan (after 0.1 s, with one
    warning line, never a quarantined file: ``importer.daemon.failures``), by which time the
    pool has replaced every connection older than the failure (SQLAlchemy invalidates the
    whole pool on a disconnect)."""
    return create_async_engine(
        to_asyncpg_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        hide_parameters=True,
        connect_args={"server_settings": {"application_name": application_name}},
    )
