"""Operators' job control through the real app, Redis and arq's real Worker: exports on the bulk
queue, listings by state, the dead-letter cycle, purging a queue and the schedule."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from arq.worker import Worker

from app.queue import serialization
from app.queue.client import JobQueue
from app.queue.deadletter import register
from jobs.worker import worker_redis
from tests.factories import admin_headers, create_user, login
from tests.support import FLAG, Sandbox, eventually, running
from tests.workers import broken, burst_worker, flaky, run_burst


async def test_run_an_export_now_on_the_bulk_queue(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    accepted = await api.post("/api/v1/exports/settings/run", headers=admin)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    assert accepted.json()["queue"] == "bulk"
    other = await api.post("/api/v1/exports/settings/run", headers=admin)
    assert other.json()["job_id"] != job_id

    queued = (await api.get("/api/v1/jobs?status=queued", headers=admin)).json()
    assert {j["job_id"] for j in queued["items"]} == {job_id, other.json()["job_id"]}
    assert {j["function"] for j in queued["items"]} == {"export_settings"}
    state = (await api.get(f"/api/v1/jobs/{job_id}", headers=admin)).json()
    assert (state["state"], state["queue"]) == ("queued", "bulk")

    unknown = await api.post("/api/v1/exports/passwords/run", headers=admin)
    assert unknown.status_code == 404
    assert "settings" in unknown.json()["detail"]

    async def export_settings(ctx: dict[str, Any]) -> dict[str, str]:
        return {"exported": "settings"}

    # A worker of the sync queue does not take it; a worker of the bulk queue does.
    await run_burst(
        burst_worker(
            sandbox,
            sandbox.queue,
            [register(export_settings, name="export_settings", queue=sandbox.queue, max_tries=1)],
        )
    )
    assert (await api.get(f"/api/v1/jobs/{job_id}", headers=admin)).json()["state"] == "queued"
    await run_burst(
        burst_worker(
            sandbox,
            sandbox.bulk_queue,
            [
                register(
                    export_settings, name="export_settings", queue=sandbox.bulk_queue, max_tries=1
                )
            ],
        )
    )
    done = (await api.get(f"/api/v1/jobs/{job_id}", headers=admin)).json()
    assert (done["state"], done["result"], done["queue"]) == (
        "complete",
        {"exported": "settings"},
        "bulk",
    )
    complete = (await api.get("/api/v1/jobs?status=complete", headers=admin)).json()
    assert job_id in {j["job_id"] for j in complete["items"]}
    assert (await api.get("/api/v1/jobs?status=queued", headers=admin)).json()["items"] == []


async def test_a_job_that_keeps_failing_is_dead_lettered_retried_and_discarded(
    api: httpx.AsyncClient, sandbox: Sandbox, queue: JobQueue
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    # arq job ids are global in a Redis database: unique ones keep runs from meeting
    flaky_id, broken_id = f"job-flaky-{uuid.uuid4().hex[:8]}", f"job-broken-{uuid.uuid4().hex[:8]}"
    functions = [
        register(flaky, name="flaky", queue=sandbox.queue, max_tries=3),
        register(broken, name="broken", queue=sandbox.queue, max_tries=3),
    ]
    await queue.submit("flaky", "smtp", job_id=flaky_id, queue=sandbox.queue, times=2)
    await queue.submit("broken", job_id=broken_id, queue=sandbox.queue)
    worker = burst_worker(sandbox, sandbox.queue, functions)
    worker.ctx["queue"] = sandbox.queue
    await run_burst(worker)

    dead = (await api.get("/api/v1/jobs/dead", headers=admin)).json()
    by_id = {d["job_id"]: d for d in dead}
    assert set(by_id) == {flaky_id, broken_id}
    assert by_id[flaky_id]["tries"] == 3  # Retry kept its meaning until max_tries
    assert "smtp is unreachable" in by_id[flaky_id]["error"]
    assert (by_id[flaky_id]["args"], by_id[flaky_id]["kwargs"]) == (["smtp"], {"times": 2})
    assert by_id[broken_id]["tries"] == 1  # any other error is final at once
    assert "this job cannot work" in by_id[broken_id]["error"]
    assert by_id[broken_id]["queue"] == "sync"
    failed = (await api.get("/api/v1/jobs?status=failed", headers=admin)).json()
    assert {flaky_id, broken_id} <= {j["job_id"] for j in failed["items"]}

    await queue.redis.set(FLAG + sandbox.queue, b"1")
    retried = await api.post(f"/api/v1/jobs/dead/{flaky_id}/retry", headers=admin)
    assert retried.status_code == 202, retried.text
    new_id = retried.json()["job_id"]
    assert new_id.startswith(f"{flaky_id}:retry:")
    assert (await api.post(f"/api/v1/jobs/dead/{flaky_id}/retry", headers=admin)).status_code == 404
    worker = burst_worker(sandbox, sandbox.queue, functions)
    worker.ctx["queue"] = sandbox.queue
    await run_burst(worker)
    rerun = (await api.get(f"/api/v1/jobs/{new_id}", headers=admin)).json()
    assert (rerun["state"], rerun["result"]) == ("complete", "done smtp x2")

    discarded = await api.delete(f"/api/v1/jobs/dead/{broken_id}", headers=admin)
    assert discarded.status_code == 200
    assert discarded.json()["function"] == "broken"
    assert (await api.delete(f"/api/v1/jobs/dead/{broken_id}", headers=admin)).status_code == 404
    assert (await api.get("/api/v1/jobs/dead", headers=admin)).json() == []


async def test_running_jobs_are_listed_in_progress(
    api: httpx.AsyncClient, sandbox: Sandbox, queue: JobQueue
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(ctx: dict[str, Any]) -> str:
        started.set()
        await release.wait()
        return "released"

    worker = Worker(
        functions=[register(slow, name="slow", queue=sandbox.queue, max_tries=1)],
        queue_name=sandbox.queue,
        redis_pool=worker_redis(sandbox.services.redis_url, queue_name=sandbox.queue),
        **serialization.OPTIONS,
        poll_delay=0.01,
        handle_signals=False,
    )
    async with running(worker):
        try:
            slow_id = f"job-slow-{uuid.uuid4().hex[:8]}"  # job ids are global in a Redis database
            await queue.submit("slow", job_id=slow_id, queue=sandbox.queue)
            await asyncio.wait_for(started.wait(), 10)
            active = (await api.get("/api/v1/jobs?status=in_progress", headers=admin)).json()
            assert [(j["job_id"], j["function"], j["queue"]) for j in active["items"]] == [
                (slow_id, "slow", "sync")
            ]
            queued = (await api.get("/api/v1/jobs?status=queued", headers=admin)).json()
            assert queued["items"] == []
            release.set()

            async def finished() -> bool:
                job = (await api.get(f"/api/v1/jobs/{slow_id}", headers=admin)).json()
                return bool(job["state"] == "complete")

            await eventually(finished)
        finally:
            release.set()


async def test_purging_a_queue_needs_its_name_twice_and_spares_other_queues(
    api: httpx.AsyncClient, sandbox: Sandbox, queue: JobQueue
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    for _ in range(3):
        assert (await api.post("/api/v1/exports/users/run", headers=admin)).status_code == 202
    kept_id = f"sync-kept-{uuid.uuid4().hex[:8]}"
    await queue.submit("sync_changes", "x", job_id=kept_id, queue=sandbox.queue)

    sizes = {q["name"]: q for q in (await api.get("/api/v1/queues", headers=admin)).json()}
    assert (sizes["bulk"]["jobs"], sizes["sync"]["jobs"]) == (3, 1)
    assert sizes["bulk"]["key"] == sandbox.bulk_queue

    for query in ("", "?confirm=sync", "?confirm=BULK"):
        refused = await api.delete(f"/api/v1/queues/bulk{query}", headers=admin)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "confirmation_required"
        assert "?confirm=bulk" in refused.json()["detail"]
    assert (await api.delete("/api/v1/queues/nope?confirm=nope", headers=admin)).status_code == 404

    purged = await api.delete("/api/v1/queues/bulk?confirm=bulk", headers=admin)
    assert purged.status_code == 200, purged.text
    assert purged.json() == {"name": "bulk", "removed": 3}
    queued = (await api.get("/api/v1/jobs?status=queued", headers=admin)).json()
    assert [j["job_id"] for j in queued["items"]] == [kept_id]


async def test_the_schedule_shows_every_periodic_job_with_its_next_and_last_run(
    api: httpx.AsyncClient, sandbox: Sandbox, worker: Worker
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())

    async def swept() -> dict[str, Any] | None:
        entries = (await api.get("/api/v1/schedule", headers=admin)).json()
        sweep: dict[str, Any] = next(e for e in entries if e["name"] == "sweep_outbox")
        return sweep if sweep["last_run"] is not None else None

    sweep = await eventually(swept)
    assert isinstance(sweep, dict)
    assert sweep["queue"] == "sync"
    assert sweep["timezone"] == "UTC"
    assert sweep["crontab"] == "*/1s"  # as configured (NETSYNC_SWEEP_INTERVAL_S=1), not 60 numbers
    assert sweep["job_name"] == "cron:sweep_outbox"
    assert sweep["last_run"]["job_id"].startswith("cron:sweep_outbox:")
    assert sweep["last_run"]["state"] == "complete"
    assert sweep["next_run"] > sweep["last_run"]["finished_at"]


async def test_job_control_is_for_administrators(api: httpx.AsyncClient, sandbox: Sandbox) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    await create_user(api, admin, "mona", "secret of m. 1234")
    mona = await login(api, "mona", "secret of m. 1234")
    for method, url in (
        ("GET", "/api/v1/jobs?status=queued"),
        ("GET", "/api/v1/jobs/dead"),
        ("POST", "/api/v1/jobs/dead/x/retry"),
        ("DELETE", "/api/v1/jobs/dead/x"),
        ("POST", "/api/v1/exports/settings/run"),
        ("GET", "/api/v1/schedule"),
        ("GET", "/api/v1/queues"),
        ("DELETE", "/api/v1/queues/sync?confirm=sync"),
    ):
        response = await api.request(method, url, headers=mona)
        assert response.status_code == 403, (method, url, response.text)
    # Someone else's (or nobody's) job reads as missing, not as forbidden.
    assert (await api.get("/api/v1/jobs/cron:sweep_outbox:1", headers=mona)).status_code == 404
    assert (await api.get("/api/v1/jobs?status=done", headers=admin)).status_code == 422
    assert (await api.get("/api/v1/jobs?status=queued&limit=0", headers=admin)).status_code == 422
    assert (await api.get("/api/v1/jobs/dead", headers=admin)).json() == []
