"""The Response Network API: ``uvicorn app.main:app``.

Everything with a connection is built in ``lifespan`` and closed on the way out; importing this
module does no I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.auth.endpoints import router as auth_router
from app.config import ResponseSettings
from app.dashboard import mount_dashboard, trends
from app.dashboard.sync_status import router as sync_status_router
from app.db import make_sessionmaker
from app.health import router as health_router
from app.imports.endpoints import router as imports_router
from app.operations.endpoints import router as jobs_router
from app.outbox.endpoints import router as outbox_router
from app.profile_types.endpoints import router as profile_types_router
from app.queue.client import JobQueue, redis_pool
from app.settings.endpoints import router as settings_router
from app.users.endpoints import router as users_router
from netsync.asgi import instrument
from netsync.db import make_engine
from netsync.errors import install_error_handlers
from netsync.heap import freeze
from netsync.logging import configure_logging
from netsync.passwords import warm_up
from netsync.throttle import SignInGuard, redis_storage


def create_app(settings: ResponseSettings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg = settings or ResponseSettings()
        configure_logging("response-api", level=cfg.log_level, fmt=cfg.log_format)
        cfg.check()
        engine = make_engine(cfg.database_url, application_name="netsync-response-api")
        queue = JobQueue(
            redis_pool(cfg.redis_dsn, queue_name=cfg.sync_queue),
            sync_queue=cfg.sync_queue,
            bulk_queue=cfg.bulk_queue,
        )
        app.state.settings = cfg
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        app.state.queue = queue
        throttle_store, throttle_pool = redis_storage(cfg.redis_dsn)
        app.state.sign_in = SignInGuard.build(
            throttle_store,
            "response-api",
            cfg.sign_in_account_limits,
            cfg.sign_in_address_limits,
            cfg.sign_in_namespace,
        )
        await warm_up()  # the dummy hash for unknown users, off the event loop
        sampling = trends.start(app)
        if cfg.gc_freeze:  # built what it keeps: the collector's full passes skip it now
            freeze()
        try:
            yield
        finally:
            await trends.stop(sampling)
            await queue.close()
            await throttle_pool.disconnect()
            await engine.dispose()

    app = FastAPI(
        title="netsync Response Network API",
        version="1.0.0",
        description="System of record for users, settings and profile types.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    instrument(app, "response-api")

    for router in (
        health_router,
        auth_router,
        users_router,
        imports_router,
        settings_router,
        profile_types_router,
        jobs_router,
        outbox_router,
        sync_status_router,
        trends.router,
    ):
        app.include_router(router)
    mount_dashboard(app)
    return app


app = create_app()
