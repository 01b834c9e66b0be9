"""What the dashboard reads besides the job endpoints: the outbox backlog, and the Request
Network's sync status and lag fetched server-side from a real Request API process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
from arq.worker import create_worker
from asgi_lifespan import LifespanManager

from app.main import create_app
from exchange.signing import Keyring
from importer.daemon.loop import Importer
from importer.db import make_sessionmaker
from jobs.worker import worker_settings
from netsync.db import make_engine
from tests.factories import admin_headers, create_user, login
from tests.processes import request_api, wait_http
from tests.support import Sandbox, eventually, free_port, running

SERVICE = "service-token-for-tests-" + "y" * 20

Client = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


def response_api(sandbox: Sandbox) -> Client:
    """The Response API in-process with settings of the test's choosing."""

    @asynccontextmanager
    async def client(**overrides: object) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(sandbox.response_settings(**overrides))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://response") as c:
                yield c

    return client


async def export_pending(
    sandbox: Sandbox, api: httpx.AsyncClient, admin: dict[str, str], job_ids: list[str]
) -> None:
    """arq's real Worker runs until the sync jobs finished and the outbox is empty (whichever of
    a job and the sweeper exported a change: the backlog is what is under test here)."""
    worker = create_worker(worker_settings(sandbox.response_settings()), handle_signals=False)

    async def drained() -> bool:
        for job_id in job_ids:
            job = (await api.get(f"/api/v1/jobs/{job_id}", headers=admin)).json()
            if job["state"] not in ("complete", "failed"):
                return False
        backlog = (await api.get("/api/v1/outbox", headers=admin)).json()
        return bool(backlog["pending"] == 0)

    async with running(worker):
        await eventually(drained, timeout=15, interval=0.05)


async def status(api: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await api.get("/api/v1/sync/status", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_outbox_backlog_counts_changes_until_a_worker_exports_them(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    before = (await api.get("/api/v1/outbox", headers=admin)).json()
    olga = await create_user(api, admin, "olga")
    oscar = await create_user(api, admin, "oscar", password="a long pass phrase 1")
    pending = (await api.get("/api/v1/outbox", headers=admin)).json()
    assert pending["pending"] == before["pending"] + 2
    assert pending["oldest_pending_at"] is not None
    assert pending["oldest_pending_age_s"] >= 0

    not_admin = await login(api, "oscar", "a long pass phrase 1")
    refused = await api.get("/api/v1/outbox", headers=not_admin)
    assert refused.status_code == 403
    assert refused.json()["error"] == "not_permitted"

    await export_pending(sandbox, api, admin, [olga["sync_job_id"], oscar["sync_job_id"]])
    drained = (await api.get("/api/v1/outbox", headers=admin)).json()
    assert drained == {"pending": 0, "oldest_pending_at": None, "oldest_pending_age_s": 0.0}


async def test_sync_status_reports_the_request_network_away_when_unset_or_unreachable(
    sandbox: Sandbox,
) -> None:
    client = response_api(sandbox)
    async with client() as api:
        admin = await admin_headers(api, sandbox.response_settings())
        assert await status(api, admin) == {
            "configured": False,
            "reachable": False,
            "error": "NETSYNC_REQUEST_API_URL is not set",
            "streams": [],
            "request_status": None,
        }
    async with client(request_api_url=f"http://127.0.0.1:{free_port()}") as api:
        away = await status(api, admin)
    assert (away["configured"], away["reachable"]) == (True, False)
    assert "Connect" in away["error"]


async def test_sync_status_shows_files_behind_until_the_importer_applies_them(
    sandbox: Sandbox,
) -> None:
    port = free_port()
    proc = request_api(sandbox, port, NETSYNC_REQUEST_SERVICE_TOKEN=SERVICE).start()
    request_settings = sandbox.request_settings()
    engine = make_engine(request_settings.database_url, pool_size=2)
    try:
        await wait_http(f"http://127.0.0.1:{port}/health")
        client = response_api(sandbox)
        url = f"http://127.0.0.1:{port}"
        async with client(request_api_url=url, request_service_token="wrong-" + SERVICE) as api:
            admin = await admin_headers(api, sandbox.response_settings())
            refused = await status(api, admin)
        assert (refused["reachable"], refused["error"]) == (False, "the Request API answered 401")

        async with client(request_api_url=url, request_service_token=SERVICE) as api:
            admin = await admin_headers(api, sandbox.response_settings())
            sasha = await create_user(api, admin, "sasha")
            await export_pending(sandbox, api, admin, [sasha["sync_job_id"]])

            behind = await status(api, admin)
            assert behind["reachable"] is True, behind
            [stream] = behind["streams"]
            assert stream["stream"] == "changes"
            assert stream["applied_seq"] == 0
            assert stream["files_behind"] == stream["published_seq"] > 0
            assert stream["lag_s"] > 0
            assert behind["request_status"]["streams"] == []

            importer = Importer(
                request_settings,
                make_sessionmaker(engine),
                Keyring.from_sources(request_settings.trusted_keys_path),
            )
            importer.prepare()
            await importer.scan_once()

            async def caught_up() -> dict[str, Any] | None:
                now = await status(api, admin)
                return now if now["streams"][0]["files_behind"] == 0 else None

            applied = await eventually(caught_up, timeout=10, interval=0.1)
            assert isinstance(applied, dict)
            [stream] = applied["streams"]
            assert stream["applied_seq"] == stream["published_seq"]
            assert stream["lag_s"] == 0
            assert applied["request_status"]["open_gaps"] == []
    finally:
        proc.stop()
        await engine.dispose()
