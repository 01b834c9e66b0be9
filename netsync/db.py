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


def make_engine(url: str, *, pool_size: int = 10, application_name: str = "netsync") -> AsyncEngine:
    """Every engine of both networks. ``hide_parameters``: a failed statement's message names
    the statement, never its values, so a database error during a password change cannot put
    a hash (or anything else a row holds) into a log line or an exception."""
    return create_async_engine(
        to_asyncpg_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        hide_parameters=True,
        connect_args={"server_settings": {"application_name": application_name}},
    )
