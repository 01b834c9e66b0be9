"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against
real processes: the Response API and a worker, the Request API, and the importer's loop.

An operator signs in, sees the sync job of a password change appear, retries a dead job with its
button and sees it leave the list and finish. The screenshot it takes goes to the sandbox, or
to ``NETSYNC_DASHBOARD_SCREENSHOT`` when set (``docs/dashboard.png`` is refreshed that way, so
a test run leaves the working tree alone). Without ``/usr/bin/chromium`` it is skipped
(``apt-get install chromium``); Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from arq.worker import Worker
from playwright.async_api import Page, async_playwright, expect
from pydantic import SecretStr

from app.bootstrap import ensure_admin
from app.queue import serialization
from app.queue.client import JobQueue, redis_pool
from app.queue.deadletter import register
from importer.daemon.loop import Importer
from jobs.worker import worker_redis
from tests.factories import ADMIN_PASSWORD, create_user, login
from tests.processes import Process, request_api, response_api, wait_http
from tests.processes import worker as worker_process
from tests.support import FLAG, Sandbox, free_port, running
from tests.workers import flaky

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVICE = "dashboard-service-token-" + "z" * 20
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="the dashboard test needs Debian's Chromium at /usr/bin/chromium: "
    "apt-get install chromium",
)


@pytest.fixture
async def processes(sandbox: Sandbox) -> AsyncIterator[str]:
    """The Response API (its base URL is yielded), its worker and the Request API."""
    await ensure_admin(
        sandbox.response_settings(admin_password=SecretStr(ADMIN_PASSWORD)),
    )
    port, request_port = free_port(), free_port()
    started: list[Process] = [
        request_api(sandbox, request_port, NETSYNC_REQUEST_SERVICE_TOKEN=SERVICE).start(),
        worker_process(sandbox, NETSYNC_WORKER_POLL_DELAY_S="0.05").start(),
        response_api(
            sandbox,
            port,
            NETSYNC_REQUEST_API_URL=f"http://127.0.0.1:{request_port}",
            NETSYNC_REQUEST_SERVICE_TOKEN=SERVICE,
            NETSYNC_TRENDS_INTERVAL_S="1",
        ).start(),
    ]
    try:
        await wait_http(f"http://127.0.0.1:{request_port}/health")
        await wait_http(f"http://127.0.0.1:{port}/ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture
async def bulk_worker(sandbox: Sandbox) -> AsyncIterator[Worker]:
    """arq's real Worker on the bulk queue, running ``flaky`` (fails until its flag is set)."""
    w = Worker(
        functions=[register(flaky, name="flaky", queue=sandbox.bulk_queue, max_tries=1)],
        queue_name=sandbox.bulk_queue,
        redis_pool=worker_redis(sandbox.services.redis_url, queue_name=sandbox.bulk_queue),
        **serialization.OPTIONS,
        poll_delay=0.05,
        keep_result=3600,
        handle_signals=False,
        ctx={"queue": sandbox.bulk_queue},
    )
    async with running(w):
        yield w


async def test_an_operator_follows_a_password_change_and_retries_a_dead_job(
    sandbox: Sandbox, processes: str, bulk_worker: Worker, importer: Importer
) -> None:
    queue = JobQueue(
        redis_pool(sandbox.services.redis_url, queue_name=sandbox.queue),
        sync_queue=sandbox.queue,
        bulk_queue=sandbox.bulk_queue,
    )
    async with (
        httpx.AsyncClient(base_url=processes, timeout=10) as api,
        async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            await page.goto(f"{processes}/dashboard")

            # Nothing shows before signing in; a non-administrator is turned away.
            admin = await login(api, "admin", ADMIN_PASSWORD)
            await create_user(api, admin, "nadia", password="a long pass phrase for n")
            await expect(page.locator("#sign-in")).to_be_visible()
            await expect(page.locator("#board")).to_be_hidden()
            await sign_in(page, "nadia", "a long pass phrase for n")
            await expect(page.locator("#sign-in-error")).to_contain_text("administrators only")
            await expect(page.locator("#board")).to_be_hidden()
            assert await page.evaluate("sessionStorage.length") == 0

            await sign_in(page, "admin", ADMIN_PASSWORD)
            await expect(page.locator("#board")).to_be_visible()
            await expect(page.locator('#queues tr[data-queue="sync"]')).to_be_visible()
            await expect(page.locator('#schedule tr[data-entry="sweep_outbox"]')).to_be_visible()

            # A password change: its sync job shows up as complete without a reload.
            user = await create_user(api, admin, "paula", password="first pass phrase of p")
            changed = await api.post(
                f"/api/v1/users/{user['id']}/reset-password",
                json={"new_password": "second pass phrase of p"},
                headers=admin,
            )
            assert changed.status_code == 200, changed.text
            job_id = changed.json()["sync_job_id"]
            done = page.locator(f'#recent tr[data-job-id="{job_id}"]')
            await expect(done).to_have_attribute("data-state", "complete")
            await expect(done).to_contain_text("sync_changes")
            ticks = page.locator('#recent tr[data-job-id^="cron:sweep_outbox:"]')
            assert await ticks.count() == 0  # the sweeper's ticks are hidden unless asked for
            await page.check("#show-ticks")
            await expect(ticks.first).to_have_attribute("data-state", "complete")
            await page.uncheck("#show-ticks")
            await expect(ticks).to_have_count(0)

            # The Request Network applied it: reachable, no file behind.
            await expect(page.locator('#sync [data-field="state"]')).to_have_text("reachable")
            changes = page.locator('#sync tr[data-stream="changes"] td')
            await expect(changes.nth(3)).to_have_text("0")

            # The trends drew the change: exported and applied per second rose above zero in
            # the chart, which keeps gaining points (one a second here) without a reload.
            trends = page.locator("#trends")
            await expect(page.locator("#trend-rate canvas")).to_have_count(1)
            await expect(page.locator("#trend-rate")).not_to_have_attribute("data-max", "0")
            before = int(await trends.get_attribute("data-points") or 0)
            assert before >= 1
            await expect(trends).not_to_have_attribute("data-points", str(before))
            board = await api.get("/api/v1/trends", headers=admin)
            assert board.status_code == 200, board.text
            points = board.json()["points"]
            assert any(p["exported_per_s"] > 0 for p in points)
            assert any((p["applied_per_s"] or 0) > 0 for p in points)
            assert points[-1]["lag_s"] is not None  # the Request API answered (by now)
            assert (await api.get("/api/v1/trends")).status_code == 401  # administrators only

            # A job that fails for good lands in the dead-letter list; Retry runs it again.
            dead_id = f"job-flaky-{uuid.uuid4().hex[:8]}"
            await queue.submit("flaky", "ldap", job_id=dead_id, queue=sandbox.bulk_queue, times=1)
            dead = page.locator(f'#dead tr[data-job-id="{dead_id}"]')
            await expect(dead).to_contain_text("ldap is unreachable")
            await expect(page.locator('#queues tr[data-queue="bulk"] td').nth(3)).to_have_text("1")
            await queue.redis.set(FLAG + sandbox.bulk_queue, b"1")
            shot = os.environ.get("NETSYNC_DASHBOARD_SCREENSHOT", str(sandbox.root / "board.png"))
            assert (await page.screenshot(path=shot, full_page=True)).startswith(b"\x89PNG")

            await dead.locator('button[data-action="retry"]').click()
            await expect(dead).to_have_count(0)
            await expect(page.locator("#notice")).to_contain_text(f"Retried {dead_id}")
            rerun = page.locator(f'#recent tr[data-job-id^="{dead_id}:retry:"]')
            await expect(rerun).to_have_attribute("data-state", "complete")
            assert await dead_ids(api, admin) == []

            # Signing out leaves nothing read with the token on the page.
            await page.click("#sign-out")
            await expect(page.locator("#board")).to_be_hidden()
            assert await page.locator("#board tbody tr").count() == 0
            assert await page.evaluate("sessionStorage.length") == 0
        finally:
            await browser.close()
            await queue.redis.delete(FLAG + sandbox.bulk_queue)
            await queue.close()


async def sign_in(page: Page, username: str, password: str) -> None:
    await page.fill('#sign-in-form input[name="username"]', username)
    await page.fill('#sign-in-form input[name="password"]', password)
    await page.click('#sign-in-form button[type="submit"]')


async def dead_ids(api: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    return [d["job_id"] for d in (await api.get("/api/v1/jobs/dead", headers=headers)).json()]
