"""The installed ``netsync`` command on jobs: the dead-letter list, retrying and discarding,
finished jobs, deferred jobs and the schedule, purging a queue; against real Redis, PostgreSQL
and arq's real Worker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.queue.client import JobQueue
from app.queue.deadletter import register
from tests.commands import anetsync, as_json, netsync
from tests.factories import admin_headers
from tests.support import FLAG, Sandbox, free_port
from tests.workers import broken, burst_worker, flaky, run_burst


async def run_jobs(sandbox: Sandbox) -> None:
    """A burst of arq's real Worker with ``flaky`` (fails until the flag is set) and ``broken``."""
    functions = [
        register(flaky, name="flaky", queue=sandbox.queue, max_tries=2),
        register(broken, name="broken", queue=sandbox.queue, max_tries=2),
    ]
    worker = burst_worker(sandbox, sandbox.queue, functions)
    worker.ctx["queue"] = sandbox.queue
    await run_burst(worker)


async def test_dead_jobs_are_listed_retried_and_discarded_and_results_show_the_outcome(
    sandbox: Sandbox, queue: JobQueue
) -> None:
    flaky_id, broken_id = f"job-flaky-{uuid.uuid4().hex[:8]}", f"job-broken-{uuid.uuid4().hex[:8]}"
    await queue.submit("flaky", "smtp", job_id=flaky_id, queue=sandbox.queue, times=1)
    await queue.submit("broken", job_id=broken_id, queue=sandbox.queue)
    await run_jobs(sandbox)

    listed = await anetsync(sandbox, "inspect", "dead", "--json")
    assert listed.returncode == 0, listed.stderr
    dead = {d["job_id"]: d for d in as_json(listed)}
    assert set(dead) == {flaky_id, broken_id}
    assert (dead[flaky_id]["function"], dead[flaky_id]["queue"]) == ("flaky", "sync")
    assert (dead[flaky_id]["tries"], dead[flaky_id]["args"]) == (2, ["smtp"])
    assert dead[flaky_id]["kwargs"] == {"times": 1}
    assert "this job cannot work" in dead[broken_id]["error"]
    table = await anetsync(sandbox, "inspect", "dead")
    assert flaky_id in table.stdout
    assert "this job cannot work" in table.stdout

    failed = as_json(await anetsync(sandbox, "inspect", "results", "--state", "failed", "--json"))
    assert {flaky_id, broken_id} <= {j["job_id"] for j in failed}
    assert {j["state"] for j in failed} == {"failed"}

    await queue.redis.set(FLAG + sandbox.queue, b"1")
    retried = await anetsync(sandbox, "jobs", "retry", flaky_id, "--json")
    assert retried.returncode == 0, retried.stderr
    new_id = as_json(retried)["job_id"]
    assert new_id.startswith(f"{flaky_id}:retry:")
    again = await anetsync(sandbox, "jobs", "retry", flaky_id)
    assert again.returncode == 1
    assert "no dead job" in again.stderr
    await run_jobs(sandbox)

    recent = as_json(await anetsync(sandbox, "inspect", "results", "--json"))
    by_id = {j["job_id"]: j for j in recent}
    assert (by_id[new_id]["state"], by_id[new_id]["result"]) == ("complete", "done smtp x1")
    assert by_id[broken_id]["state"] == "failed"
    assert recent.index(by_id[new_id]) < recent.index(by_id[broken_id])  # newest first
    complete = await anetsync(sandbox, "inspect", "results", "--state", "complete")
    assert new_id in complete.stdout
    assert broken_id not in complete.stdout

    discarded = await anetsync(sandbox, "jobs", "discard", broken_id, "--json")
    assert discarded.returncode == 0, discarded.stderr
    assert as_json(discarded)["function"] == "broken"
    assert (await anetsync(sandbox, "jobs", "discard", broken_id)).returncode == 1
    assert as_json(await anetsync(sandbox, "inspect", "dead", "--json")) == []


async def test_queue_purge_refuses_without_yes_and_then_drops_every_queued_job(
    sandbox: Sandbox, queue: JobQueue
) -> None:
    ids = [await queue.enqueue_export("settings") for _ in range(3)]

    refused = await anetsync(sandbox, "queue", "purge", "bulk")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert await queue.redis.zcard(sandbox.bulk_queue) == 3
    unknown = await anetsync(sandbox, "queue", "purge", "nightly", "--yes")
    assert unknown.returncode == 1
    assert "sync, bulk" in unknown.stderr

    purged = await anetsync(sandbox, "queue", "purge", "bulk", "--yes", "--json")
    assert purged.returncode == 0, purged.stderr
    assert as_json(purged) == {"name": "bulk", "removed": 3}
    assert await queue.redis.zcard(sandbox.bulk_queue) == 0
    assert [(await queue.info(job_id)).state for job_id in ids] == ["not_found"] * 3


async def test_scheduled_lists_deferred_jobs_and_next_ticks_and_schedule_matches_the_api(
    api: httpx.AsyncClient, sandbox: Sandbox, queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    later = f"job-later-{uuid.uuid4().hex[:8]}"
    await queue.submit("broken", job_id=later, queue=sandbox.bulk_queue, _defer_by=600)
    before = datetime.now(UTC)

    result = await anetsync(sandbox, "inspect", "scheduled", "--json")
    assert result.returncode == 0, result.stderr
    rows = as_json(result)
    due = [datetime.fromisoformat(r["due_at"]) for r in rows]
    assert due == sorted(due)
    deferred = [r for r in rows if r["kind"] == "deferred"]
    assert [(r["name"], r["function"], r["queue"]) for r in deferred] == [(later, "broken", "bulk")]
    at = datetime.fromisoformat(deferred[0]["due_at"])
    assert before + timedelta(seconds=590) < at < before + timedelta(seconds=610)
    cron = {r["name"]: r for r in rows if r["kind"] == "cron"}
    assert "cron:sweep_outbox" in cron
    assert all(datetime.fromisoformat(r["due_at"]) > before for r in cron.values())
    table = await anetsync(sandbox, "inspect", "scheduled")
    assert later in table.stdout

    # the bulk schedule reads its settings from the environment, as the CLI's process does
    monkeypatch.setenv("NETSYNC_CRON_NAMESPACE", sandbox.cron_namespace)
    admin = await admin_headers(api, sandbox.response_settings())
    from_api = (await api.get("/api/v1/schedule", headers=admin)).json()
    from_cli = as_json(await anetsync(sandbox, "inspect", "schedule", "--json"))

    def stable(entries: list[dict[str, object]]) -> list[tuple[object, ...]]:
        keys = ("name", "job_name", "queue", "crontab", "timezone", "last_run_at")
        return [tuple(e[k] for k in keys) for e in entries]

    assert stable(from_cli) == stable(from_api)
    assert {e["job_name"] for e in from_cli} >= set(cron)

    off = netsync(sandbox, "inspect", "schedule", NETSYNC_SCHEDULE_DAILY_STATS="off")
    line = next(x for x in off.stdout.splitlines() if "daily_stats" in x)
    assert "off" in line


def test_jobs_commands_say_when_redis_is_down(sandbox: Sandbox) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = netsync(sandbox, "inspect", "dead", NETSYNC_REDIS_URL=down)
    assert result.returncode == 3
    assert "Redis did not answer" in result.stderr
    assert "Traceback" not in result.stderr
