"""The daemons as operators see them, as real processes: their ``/metrics`` after real work,
each worker replica's own liveness, and one request id followed from the API log to the import
log."""

from __future__ import annotations

import json
import signal
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from app.queue.client import list_workers, redis_pool
from exchange.writer import publish_export
from jobs.worker import worker_settings
from netsync.config import to_libpq_url
from tests.factories import admin_headers, create_user
from tests.processes import (
    ADMIN_PASSWORD,
    Process,
    bootstrap_admin,
    importer,
    response_api,
    token,
    wait_http,
    worker,
)
from tests.scrape import Scrape, scrape
from tests.support import Sandbox, eventually, free_port

pytestmark = pytest.mark.slow


async def synced_version(sandbox: Sandbox, username: str) -> int | None:
    conn = await asyncpg.connect(to_libpq_url(sandbox.services.request_url))
    try:
        version: int | None = await conn.fetchval(
            "SELECT version FROM synced_users WHERE username = $1", username
        )
        return version
    finally:
        await conn.close()


def start_worker(sandbox: Sandbox, name: str = "worker") -> tuple[Process, str]:
    port = free_port()
    proc = worker(sandbox, name=name, NETSYNC_WORKER_METRICS_PORT=str(port)).start()
    return proc, f"http://127.0.0.1:{port}"


def start_importer(sandbox: Sandbox) -> tuple[Process, str]:
    port = free_port()
    proc = importer(sandbox, NETSYNC_IMPORTER_METRICS_PORT=str(port)).start()
    return proc, f"http://127.0.0.1:{port}"


async def test_worker_and_importer_metrics_move_by_the_work_they_did(
    api: httpx.AsyncClient, sandbox: Sandbox, procs: list[Process]
) -> None:
    w, worker_url = start_worker(sandbox)
    i, importer_url = start_importer(sandbox)
    procs += [w, i]
    await wait_http(f"{worker_url}/ready")
    await wait_http(f"{importer_url}/ready")
    started = time.time()
    admin = await admin_headers(api, sandbox.response_settings())
    user = await create_user(api, admin, "peggy")
    await eventually(lambda: synced_version(sandbox, "peggy"), timeout=15)

    job = {"job": "sync_changes", "queue": sandbox.queue}
    async with httpx.AsyncClient(timeout=5) as client:

        async def user_job_done() -> Scrape | None:
            found = await scrape(client, f"{worker_url}/metrics")
            return found if found.value("netsync_jobs_succeeded_total", **job) == 1 else None

        worker_before = await eventually(user_job_done)
        assert isinstance(worker_before, Scrape)
        importer_before = await scrape(client, f"{importer_url}/metrics")

        for n in range(3):
            reset = await api.post(
                f"/api/v1/users/{user['id']}/reset-password",
                json={"new_password": f"metrics pass phrase {n}"},
                headers=admin,
            )
            assert reset.status_code == 200

            async def arrived(want: int = n + 2) -> bool:
                return await synced_version(sandbox, "peggy") == want

            await eventually(arrived, timeout=15)

        async def three_more() -> Scrape | None:
            found = await scrape(client, f"{worker_url}/metrics")
            return found if found.value("netsync_jobs_succeeded_total", **job) == 4 else None

        after = await eventually(three_more)
        assert isinstance(after, Scrape)
        for name in ("netsync_jobs_started_total", "netsync_job_duration_seconds_count"):
            assert after.value(name, **job) - worker_before.value(name, **job) == 3
        assert after.value("netsync_jobs_failed_total", **job) == 0

        # The sweeper's cron tick comes due every second and may sit in the queue for a moment
        # at scrape time; the queue drains once the worker picks it up.
        async def drained() -> bool:
            found = await scrape(client, f"{worker_url}/metrics")
            return found.value("netsync_queue_depth", queue=sandbox.queue) == 0

        await eventually(drained, timeout=10)
        assert after.value("netsync_outbox_backlog") == 0
        cron_jobs = worker_settings(sandbox.response_settings())["cron_jobs"]
        assert after.value("netsync_schedule_entries") == len(cron_jobs)
        last_sweep = after.value("netsync_cron_last_run_timestamp_seconds", job="sweep_outbox")
        assert last_sweep >= started

        importer_after = await scrape(client, f"{importer_url}/metrics")

        def moved(name: str) -> float:
            return importer_after.value(name) - importer_before.value(name)

        assert moved("netsync_import_files_applied_total") == 3
        assert moved("netsync_import_changes_applied_total") == 3
        assert moved("netsync_import_lag_seconds_count") == 3

        # a forged file: signed, then altered
        staged = sandbox.root / "staged"
        staged.mkdir()
        forged = publish_export(
            staged,
            sandbox.signer,
            recipients=sandbox.recipients,
            stream="changes",
            seq=999,
            kind="changes",
            file_id=uuid.uuid4(),
            created_at=datetime.now(UTC),
            records=[],
        )
        data = bytearray(forged.path.read_bytes())
        data[data.index(b"\n") + 40] ^= 1  # one bit of the ciphertext
        (sandbox.exports / forged.name).write_bytes(data)
        reason = {"reason": "bad_signature"}

        async def quarantined() -> bool:
            found = await scrape(client, f"{importer_url}/metrics")
            return found.value("netsync_import_files_quarantined_total", **reason) == 1

        await eventually(quarantined)
        assert importer_before.value("netsync_import_files_quarantined_total") == 0

        health = await client.get(f"{worker_url}/health")
        assert health.status_code == 200
        assert health.json()["worker_id"]
        assert (await client.get(f"{importer_url}/health")).status_code == 200


async def test_each_worker_replica_has_its_own_liveness(
    sandbox: Sandbox, procs: list[Process]
) -> None:
    (a, a_url), (b, b_url) = start_worker(sandbox, "worker-a"), start_worker(sandbox, "worker-b")
    procs += [a, b]
    await wait_http(f"{a_url}/health")
    await wait_http(f"{b_url}/health")
    settings = sandbox.response_settings()
    redis = redis_pool(settings.redis_dsn, queue_name=sandbox.queue)
    try:

        async def both_listed() -> list[dict[str, Any]] | None:
            mine = [w for w in await list_workers(redis) if w["queue"] == sandbox.queue]
            return mine if len(mine) == 2 else None

        listed = await eventually(both_listed)
        assert isinstance(listed, list)
        assert a.proc is not None
        assert b.proc is not None
        assert {w["pid"] for w in listed} == {a.proc.pid, b.proc.pid}
    finally:
        await redis.aclose(close_connection_pool=True)

    assert a.proc is not None
    async with httpx.AsyncClient(timeout=1.0) as client:
        a.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(httpx.TimeoutException):
                await client.get(f"{a_url}/health")
            assert (await client.get(f"{b_url}/health")).status_code == 200
        finally:
            a.proc.send_signal(signal.SIGCONT)
        await wait_http(f"{a_url}/health")


def json_lines(proc: Process) -> list[dict[str, Any]]:
    lines = []
    for line in proc.output().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


async def test_one_request_id_is_followed_from_the_api_to_the_import_log(
    sandbox: Sandbox, procs: list[Process]
) -> None:
    api_port = free_port()
    await bootstrap_admin(sandbox)
    api = response_api(sandbox, api_port).start()
    w, _ = start_worker(sandbox)
    i, _ = start_importer(sandbox)
    procs += [api, w, i]
    base = f"http://127.0.0.1:{api_port}"
    await wait_http(f"{base}/ready")
    cid = f"trace-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=10) as client:
        admin = {"Authorization": f"Bearer {await token(client, base, 'admin', ADMIN_PASSWORD)}"}
        created = await client.post(
            f"{base}/api/v1/users",
            json={"username": "trent", "password": "first pass phrase"},
            headers={**admin, "X-Request-ID": cid},
        )
        assert created.status_code == 201
        assert created.headers["x-request-id"] == cid
    await eventually(lambda: synced_version(sandbox, "trent"), timeout=15)

    def carrying(proc: Process) -> list[dict[str, Any]]:
        return [
            line
            for line in json_lines(proc)
            if line.get("correlation_id") == cid or cid in line.get("correlation_ids", ())
        ]

    async def all_logged() -> bool:
        return all(carrying(p) for p in (api, w, i))

    await eventually(all_logged, timeout=10)
    [request] = [line for line in carrying(api) if line["msg"] == "request"]
    assert (request["route"], request["status"], request["process"]) == (
        "/api/v1/users",
        201,
        "response-api",
    )
    published = [line for line in carrying(w) if line["msg"] == "published export file"]
    job = [line for line in carrying(w) if line["msg"] == "job finished"]
    assert published or job
    [applied] = [line for line in carrying(i) if line["msg"] == "applied change"]
    assert applied["entity"] == "user"
    assert applied["entity_id"] == created.json()["id"]
    # the line in each log is what `grep <request id>` finds
    for proc in (api, w, i):
        assert cid in proc.output()
