"""The Request Network's database: its declarative base and its own session type."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase

from netsync.db import naming_metadata


class RequestBase(DeclarativeBase):
    metadata = naming_metadata()


class RequestSession(AsyncSession):
    """A session of the Request database; Response Network code does not accept it."""


RequestSessionMaker = async_sessionmaker[RequestSession]


def make_sessionmaker(engine: AsyncEngine) -> RequestSessionMaker:
    return async_sessionmaker(engine, class_=RequestSession, expire_on_commit=False)
