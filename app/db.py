"""The Response Network's database: its declarative base and its own session type."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase

from netsync.db import naming_metadata


class ResponseBase(DeclarativeBase):
    metadata = naming_metadata()


class ResponseSession(AsyncSession):
    """A session of the Response database; Request Network code does not accept it."""


ResponseSessionMaker = async_sessionmaker[ResponseSession]


def make_sessionmaker(engine: AsyncEngine) -> ResponseSessionMaker:
    return async_sessionmaker(engine, class_=ResponseSession, expire_on_commit=False)


@asynccontextmanager
async def session_scope(maker: ResponseSessionMaker) -> AsyncIterator[ResponseSession]:
    """Commit on success, roll back on any error: the single owner of the transaction."""
    async with maker() as session, session.begin():
        yield session


def violated_constraint(exc: IntegrityError) -> str | None:
    """The name of the constraint an ``IntegrityError`` broke (asyncpg reports it), if known."""
    cause = exc.orig.__cause__ if exc.orig is not None else None
    name = getattr(cause, "constraint_name", None)
    return name if isinstance(name, str) else None
