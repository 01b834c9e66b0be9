"""The Request Network API: ``uvicorn importer.api:app`` (127.0.0.1:8001 under ``./run up``).

People sign in here with the password they set on the Response Network: the synced hash is checked
(argon2id, or a legacy bcrypt hash). Deactivated and deleted users cannot sign in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, text

from importer.config import RequestSettings
from importer.db import RequestSession, RequestSessionMaker, make_sessionmaker
from importer.models import ImportLedger, QuarantinedFile, SyncedUser
from netsync.asgi import instrument
from netsync.db import make_engine
from netsync.errors import ERROR_RESPONSES, NotAuthenticated, install_error_handlers
from netsync.logging import configure_logging
from netsync.passwords import verify_password


async def get_session(request: Request) -> AsyncIterator[RequestSession]:
    maker: RequestSessionMaker = request.app.state.sessionmaker
    async with maker() as session:
        yield session


SessionDep = Annotated[RequestSession, Depends(get_session)]


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Annotated[str, Field(min_length=1, max_length=150)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class LoggedIn(BaseModel):
    authenticated: bool = True
    user_id: str
    username: str
    role: str


class StreamStatus(BaseModel):
    stream: str
    last_applied_seq: int
    files_applied: int
    last_applied_at: datetime
    last_exported_at: datetime
    lag_s: float


class SyncStatus(BaseModel):
    streams: list[StreamStatus]
    files_quarantined: int


def create_app(settings: RequestSettings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg = settings or RequestSettings()
        configure_logging("request-api", level=cfg.log_level, fmt=cfg.log_format)
        engine = make_engine(cfg.database_url, application_name="netsync-request-api")
        app.state.settings = cfg
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="netsync Request Network API",
        version="1.0.0",
        description="Sign-in against synced password hashes, and the state of the sync.",
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

    @app.post("/api/v1/auth/login", tags=["auth"])
    async def login(body: LoginRequest, session: SessionDep) -> LoggedIn:
        user = await session.scalar(
            select(SyncedUser)
            .where(
                func.lower(SyncedUser.username) == body.username.lower(),
                SyncedUser.deleted.is_(False),
            )
            .order_by(SyncedUser.changed_at.desc())
            .limit(1)
        )
        ok = await verify_password(user.password_hash if user else None, body.password)
        if user is None or not ok or not user.is_active:
            raise NotAuthenticated("invalid username or password")
        return LoggedIn(user_id=str(user.id), username=user.username or "", role=user.role or "")

    @app.get("/api/v1/sync/status", tags=["sync"])
    async def sync_status(session: SessionDep) -> SyncStatus:
        rows = await session.execute(
            select(
                ImportLedger.stream,
                func.max(ImportLedger.seq),
                func.count(),
                func.max(ImportLedger.applied_at),
            ).group_by(ImportLedger.stream)
        )
        now = datetime.now(UTC)
        streams: list[StreamStatus] = []
        for stream, last_seq, count, last_applied in rows.all():
            exported = await session.scalar(
                select(ImportLedger.exported_at).where(
                    ImportLedger.stream == stream, ImportLedger.seq == last_seq
                )
            )
            assert exported is not None
            streams.append(
                StreamStatus(
                    stream=stream,
                    last_applied_seq=last_seq,
                    files_applied=count,
                    last_applied_at=last_applied,
                    last_exported_at=exported,
                    lag_s=round((now - exported).total_seconds(), 3),
                )
            )
        quarantined = await session.scalar(select(func.count()).select_from(QuarantinedFile))
        return SyncStatus(streams=streams, files_quarantined=quarantined or 0)

    return app


app = create_app()
