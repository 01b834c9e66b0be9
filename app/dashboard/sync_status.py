"""``GET /api/v1/sync/status``: the Request Network's import status, as seen from here.

The dashboard is served by the Response API and must not hold a Request Network credential in
the browser, so this endpoint asks the Request API server-side (``NETSYNC_REQUEST_API_URL``, with
``NETSYNC_REQUEST_SERVICE_TOKEN`` as bearer) and answers ``{"reachable": false, ...}`` when it is
not configured or does not answer: the other network being away is a state to show, not an error.

Lag is measured in files, per stream: the newest file this network published against the newest
the Request Network applied, and how long the oldest file not yet applied has been waiting. The
Request API's own ``lag_s`` (now minus the export time of its last applied file) grows while
nothing changes; this one is zero whenever the two networks agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import func, select

from app.config import ResponseSettings
from app.db import ResponseSession
from app.deps import AdminUser, SettingsDep, UowDep
from app.outbox.models import ExportFile
from netsync.errors import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1/sync", tags=["jobs"], responses=ERROR_RESPONSES)

#: The dashboard refreshes every few seconds: a Request API slower than this counts as away.
TIMEOUT_S = 2.0


class StreamLag(BaseModel):
    stream: str
    #: The newest file published here, and the newest the Request Network applied (0: none).
    published_seq: int
    applied_seq: int
    files_behind: int
    #: How long the oldest published file not yet applied has waited; 0 when none is behind.
    lag_s: float


class RequestNetworkStatus(BaseModel):
    #: ``NETSYNC_REQUEST_API_URL`` is set.
    configured: bool
    reachable: bool
    #: Why the status could not be read, when it could not.
    error: str | None = None
    streams: list[StreamLag] = []
    #: ``GET /api/v1/sync/status`` of the Request API as it answered (gaps, quarantine, …).
    request_status: dict[str, Any] | None = None


async def fetch_request_status(
    settings: ResponseSettings,
) -> tuple[dict[str, Any] | None, str | None]:
    assert settings.request_api_url is not None
    token = settings.request_service_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    url = settings.request_api_url.rstrip("/") + "/api/v1/sync/status"
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            response = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if response.status_code != 200:
        return None, f"the Request API answered {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return None, "the Request API answered something other than JSON"
    if not isinstance(body, dict):
        return None, "the Request API answered an unexpected body"
    return body, None


async def stream_lags(session: ResponseSession, applied: dict[str, int]) -> list[StreamLag]:
    now = datetime.now(UTC)
    published = await session.execute(
        select(ExportFile.stream, func.max(ExportFile.seq))
        .where(ExportFile.published_at.is_not(None))
        .group_by(ExportFile.stream)
        .order_by(ExportFile.stream)
    )
    streams = []
    for stream, seq in published.all():
        done = applied.get(stream, 0)
        waiting_since = None
        if seq > done:
            waiting_since = await session.scalar(
                select(func.min(ExportFile.published_at)).where(
                    ExportFile.stream == stream, ExportFile.seq > done
                )
            )
        lag = (now - waiting_since).total_seconds() if waiting_since is not None else 0.0
        streams.append(
            StreamLag(
                stream=stream,
                published_seq=seq,
                applied_seq=done,
                files_behind=max(0, seq - done),
                lag_s=round(max(0.0, lag), 3),
            )
        )
    return streams


def applied_seqs(status: dict[str, Any]) -> dict[str, int]:
    found: dict[str, int] = {}
    for stream in status.get("streams") or []:
        if isinstance(stream, dict) and isinstance(stream.get("last_applied_seq"), int):
            found[str(stream.get("stream"))] = stream["last_applied_seq"]
    return found


@router.get("/status")
async def read_sync_status(
    uow: UowDep, settings: SettingsDep, _: AdminUser
) -> RequestNetworkStatus:
    """The Request Network's import status and the lag per stream, when its API answers."""
    if not settings.request_api_url:
        return RequestNetworkStatus(
            configured=False, reachable=False, error="NETSYNC_REQUEST_API_URL is not set"
        )
    status, error = await fetch_request_status(settings)
    if status is None:
        return RequestNetworkStatus(configured=True, reachable=False, error=error)
    return RequestNetworkStatus(
        configured=True,
        reachable=True,
        streams=await stream_lags(uow.session, applied_seqs(status)),
        request_status=status,
    )
