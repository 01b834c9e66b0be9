"""The connections a CLI command opens: our job queues in Redis and a Response database session.

Each command opens what it needs for one call and closes it on the way out. Redis not answering
is a message and exit code 3, the same as ``export run`` uses, so scripts can tell "the system is
down" (3) from "no such job" (1) and "bad usage" (2).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import typer
from sqlalchemy.exc import SQLAlchemyError

from app.config import ResponseSettings
from app.db import ResponseSession, make_sessionmaker
from app.queue.client import JobQueue, QueueUnavailable, redis_pool
from netsync.db import make_engine
from ops.cli.output import err

UNAVAILABLE = 3


@asynccontextmanager
async def job_queue(settings: ResponseSettings) -> AsyncIterator[JobQueue]:
    """Both queues, as the API sees them; ``QueueUnavailable`` becomes exit code 3."""
    queue = JobQueue(
        redis_pool(settings.redis_dsn, queue_name=settings.sync_queue),
        sync_queue=settings.sync_queue,
        bulk_queue=settings.bulk_queue,
    )
    try:
        yield queue
    except QueueUnavailable as exc:
        err.print(f"[red]Redis did not answer[/red] ({exc}); is it reachable?")
        raise typer.Exit(UNAVAILABLE) from exc
    finally:
        await queue.close()


@asynccontextmanager
async def response_session(settings: ResponseSettings) -> AsyncIterator[ResponseSession]:
    """One read-only use of the Response database (nothing is committed)."""
    engine = make_engine(settings.database_url, pool_size=1, application_name="netsync-cli")
    try:
        async with make_sessionmaker(engine)() as session:
            yield session
    except (OSError, SQLAlchemyError) as exc:
        err.print(f"[red]the Response database did not answer[/red] ({exc!r})")
        raise typer.Exit(UNAVAILABLE) from exc
    finally:
        await engine.dispose()
