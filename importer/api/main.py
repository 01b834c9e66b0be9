"""The Request Network API: ``uvicorn importer.api:app`` (127.0.0.1:8001 under ``./run up``).

People sign in here with the password they set on the Response Network: the synced hash is checked
(argon2id, or a legacy bcrypt hash). Deactivated and deleted users cannot sign in. Sign-in is
throttled per account and per client address with counters in this network's own PostgreSQL
(``netsync.throttle``); an outdated hash is not rehashed here: the Response Network is the system
of record, and rehashes at its own next sign-in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, text

from importer.api.auth import Operator, create_token
from importer.api.endpoints import SessionDep, router
from importer.api.schemas import LoggedIn, LoginRequest
from importer.config import RequestSettings
from importer.db import make_sessionmaker
from importer.models import SyncedUser
from netsync.asgi import instrument
from netsync.db import make_engine
from netsync.errors import (
    ERROR_RESPONSES,
    NotAuthenticated,
    NotPermitted,
    install_error_handlers,
)
from netsync.logging import configure_logging
from netsync.passwords import verify_password, warm_up
from netsync.text import Text
from netsync.throttle import PostgresStorage, SignInGuard

log = logging.getLogger(__name__)


def create_app(settings: RequestSettings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg = settings or RequestSettings()
        configure_logging("request-api", level=cfg.log_level, fmt=cfg.log_format)
        # Refuse to start with a missing or placeholder secret outside development.
        app.state.token_secret = cfg.token_secret()
        app.state.service_token = cfg.service_token()
        engine = make_engine(cfg.database_url, application_name="netsync-request-api")
        app.state.settings = cfg
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        app.state.sign_in = SignInGuard.build(
            PostgresStorage(engine),
            "request-api",
            cfg.sign_in_account_limits,
            cfg.sign_in_address_limits,
            cfg.sign_in_namespace,
        )
        await warm_up()  # the dummy hash for unknown users, off the event loop
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="netsync Request Network API",
        version="1.0.0",
        description=(
            "Sign-in against synced password hashes, the synced users, settings and profile "
            "types, and the state of the sync. Read endpoints need a bearer token: one from "
            "``/api/v1/auth/login``, or the service token."
        ),
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    install_error_handlers(app)
    instrument(app, "request-api")

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["health"])
    async def ready(session: SessionDep) -> JSONResponse:
        try:
            async with asyncio.timeout(2):
                await session.execute(text("SELECT 1"))
            ok = True
        except Exception:  # any failure means "not ready"
            ok = False
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": {"database": ok}},
            status_code=200 if ok else 503,
        )

    @app.post(
        "/api/v1/auth/login",
        tags=["auth"],
        responses={429: {"description": "too many attempts (see Retry-After)"}},
    )
    async def login(body: LoginRequest, request: Request) -> LoggedIn:
        """Sign in; throttled per account and per client address (429 with Retry-After)."""
        guard: SignInGuard = app.state.sign_in
        address = request.client.host if request.client else None
        await guard.attempt(body.username, address)
        async with app.state.sessionmaker() as session:  # released before hashing
            user = await session.scalar(
                select(SyncedUser)
                .where(
                    func.lower(SyncedUser.username) == body.username.lower(),
                    SyncedUser.deleted.is_(False),
                )
                .order_by(SyncedUser.changed_at.desc())
                .limit(1)
            )
        ok = await verify_password(
            user.password_hash if user else None,
            body.password,
            allowed=user is not None and bool(user.is_active),
        )
        if user is None or not ok or not user.is_active:
            raise NotAuthenticated("invalid username or password")
        await guard.succeeded(body.username, address)
        cfg: RequestSettings = app.state.settings
        token = create_token(user, secret=app.state.token_secret, minutes=cfg.request_token_minutes)
        return LoggedIn(
            user_id=str(user.id),
            username=user.username or "",
            role=user.role or "",
            access_token=token,
            expires_in=cfg.request_token_minutes * 60,
        )

    @app.delete("/api/v1/auth/locks/{username}", tags=["auth"], status_code=204)
    async def clear_sign_in_lock(username: Text, who: Operator) -> Response:
        """Lift the sign-in throttle of an account (administrators only: the service token is a
        read-only credential, and must not undo the throttle)."""
        if who.kind != "user":
            raise NotPermitted("administrators only")
        guard: SignInGuard = app.state.sign_in
        await guard.clear(username)
        log.warning("sign-in lock lifted", extra={"username": username, "by": str(who.user_id)})
        return Response(status_code=204)

    app.include_router(router)
    return app


app = create_app()
