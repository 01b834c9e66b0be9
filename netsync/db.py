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
    connection the server dropped (a restart, a failover) is replaced before anyone sees an
    error. The APIs keep it: a request should not fail for that. The sync path turns it off
    (the relay's worker, the importer): a round trip on every checkout is a tenth of a change's
    way, and both retry whatever the database refuses (the worker's job backs off from 50 ms,
    the importer's scan from 0.1 s), after which the pool has replaced every connection older
    than the failure (SQLAlchemy invalidates the whole pool on a disconnect)."""
    return create_async_engine(
        to_asyncpg_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        hide_parameters=True,
        connect_args={"server_settings": {"application_name": application_name}},
    )
