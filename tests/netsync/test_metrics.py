"""Metrics of the two APIs (in-process, real lifespans) and the gauges a worker samples on
scrape. The daemons' metrics after real work are in ``tests/system/test_observability.py``."""

from __future__ import annotations

import uuid

import httpx
from asgi_lifespan import LifespanManager

from app.queue.client import redis_pool
from importer.api import create_app as create_request_app
from jobs.observe import sample
from netsync.db import make_engine
from tests.factories import admin_headers, create_user
from tests.scrape import scrape
from tests.support import Sandbox

RESPONSE = {"app": "response-api"}


async def test_the_response_api_counts_requests_by_route_template_and_status(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    before = await scrape(api)
    for _ in range(2):
        missing = await api.get(f"/api/v1/jobs/sync:{uuid.uuid4()}", headers=admin)
        assert missing.status_code == 404
    assert (await api.get("/no/such/page")).status_code == 404
    await create_user(api, admin, "mallory")
    after = await scrape(api)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **RESPONSE, **labels) - before.value(name, **RESPONSE, **labels)

    route = "/api/v1/jobs/{job_id}"
    assert delta("netsync_http_requests_total", route=route, status="404", method="GET") == 2
    assert delta("netsync_http_request_duration_seconds_count", route=route) == 2
    assert delta("netsync_http_requests_total", route="<unmatched>", status="404") == 1
    assert delta("netsync_http_requests_total", route="/api/v1/users", status="201") == 1
    # one series per route, never one per id or path
    routes = after.label_values("netsync_http_requests_total", "route")
    assert not [r for r in routes if "sync:" in r or r.startswith("/no/")]
    # the change's sync job was handed to Redis
    queue = sandbox.queue
    enqueued = after.value("netsync_jobs_enqueued_total", job="sync_changes", queue=queue)
    assert enqueued - before.value("netsync_jobs_enqueued_total", queue=queue) == 1


async def test_the_request_id_is_taken_from_the_caller_or_made_and_always_returned(
    api: httpx.AsyncClient,
) -> None:
    mine = await api.get("/health", headers={"X-Request-ID": "trace-42"})
    assert mine.headers["x-request-id"] == "trace-42"
    made = await api.get("/health", headers={"X-Request-ID": "x" * 500})
    assert made.headers["x-request-id"] != "x" * 500
    assert len(made.headers["x-request-id"]) == 32
    assert (await api.get("/health")).headers["x-request-id"]


async def test_the_request_api_serves_its_metrics(sandbox: Sandbox) -> None:
    app = create_request_app(sandbox.request_settings())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://request") as client:
            before = await scrape(client)
            refused = await client.post(
                "/api/v1/auth/login", json={"username": "nobody", "password": "wrong"}
            )
            assert refused.status_code == 401
            after = await scrape(client)
    labels = {"app": "request-api", "route": "/api/v1/auth/login", "status": "401"}
    name = "netsync_http_requests_total"
    assert after.value(name, **labels) - before.value(name, **labels) == 1


async def test_queue_depth_and_outbox_backlog_are_sampled_from_redis_and_the_database(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    # No worker runs: the admin's and the new user's changes wait in the outbox, and the user's
    # sync job (the admin was created directly, not through the API) waits in the queue.
    admin = await admin_headers(api, sandbox.response_settings())
    await create_user(api, admin, "oscar")
    settings = sandbox.response_settings()
    redis = redis_pool(settings.redis_dsn, queue_name=sandbox.queue)
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        await sample({"redis": redis, "engine": engine}, sandbox.queue)
        after = await scrape(api)
    finally:
        await redis.aclose(close_connection_pool=True)
        await engine.dispose()
    assert after.value("netsync_queue_depth", queue=sandbox.queue) == 1
    assert after.value("netsync_outbox_backlog") == 2
    assert after.value("netsync_outbox_oldest_pending_age_seconds") > 0
