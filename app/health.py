"""``/health`` (the process is alive) and ``/ready`` (it can serve: database and Redis answer)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.queue.client import JobQueue

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def _database_ok(engine: AsyncEngine) -> bool:
    try:
        async with asyncio.timeout(2):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception:  # any failure means "not ready"; the reason is not the prober's business
        return False
    return True


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    queue: JobQueue = request.app.state.queue
    checks = {
        "database": await _database_ok(request.app.state.engine),
        "redis": await queue.ping(),
    }
    ok = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503
    )
