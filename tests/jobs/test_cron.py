"""The schedule: exactly once per tick with several real bulk workers, no overlap, no replay.

The process tests run ``arq jobs.BulkWorkerSettings`` as real processes with the schedule
compressed to every second; what they check is what an operator would: the ``cron_ticks`` table,
the published snapshot files, and which worker ran which tick according to arq's own log.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from arq.worker import create_worker

from app.db import make_sessionmaker
from app.queue.client import redis_pool
from app.scheduling.registry import ScheduleSettings
from exchange.format import parse_file_name
from jobs.bulk import bulk_worker_settings
from jobs.periodic import report_missed
from jobs.ticks import run_guarded, tick_of
from netsync.config import to_libpq_url
from netsync.db import make_engine
from tests.processes import Process, bulk_worker
from tests.support import Sandbox, eventually, running

EVERY_SECOND = {
    "NETSYNC_SCHEDULE_EXPORT_SETTINGS": "*/1s",
    "NETSYNC_SCHEDULE_EXPORT_PROFILE_TYPES": "*/1s",
    "NETSYNC_SCHEDULE_EXPORT_USERS": "off",
    "NETSYNC_SCHEDULE_EXPORT_RESULTS": "off",
    "NETSYNC_SCHEDULE_SYSTEM_MONITORING": "off",
    "NETSYNC_SCHEDULE_CACHE_MAINTENANCE": "off",
    "NETSYNC_SCHEDULE_DAILY_STATS": "off",
    "NETSYNC_SCHEDULE_RETENTION_CLEANUP": "off",
    "NETSYNC_WORKER_POLL_DELAY_S": "0.1",
}


async def _response(sandbox: Sandbox) -> asyncpg.Connection:
    return await asyncpg.connect(to_libpq_url(sandbox.services.response_url))


async def _seed_settings(sandbox: Sandbox, count: int) -> None:
    conn = await _response(sandbox)
    try:
        await conn.execute(
            "INSERT INTO settings (id, key, value, version)"
            " SELECT gen_random_uuid(), 'seed.key_' || g, to_jsonb(g), 1"
            " FROM generate_series(1, $1) g",
            count,
        )
    finally:
        await conn.close()


async def _ticks(sandbox: Sandbox, name: str) -> list[asyncpg.Record]:
    conn = await _response(sandbox)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT tick_at, status, result FROM cron_ticks WHERE name = $1 ORDER BY tick_at",
            name,
        )
        return rows
    finally:
        await conn.close()


def _published(exports: Path, stream: str) -> list[int]:
    return sorted(
        n.seq
        for p in exports.iterdir()
        if (n := parse_file_name(p.name)) is not None and n.stream == stream
    )


def _started_ticks(workers: list[Process]) -> Counter[str]:
    """Cron job id → how many times any worker process started it, from the workers' logs."""
    started: Counter[str] = Counter()
    for w in workers:
        for line in w.output().splitlines():
            if line.startswith("{") and '"periodic job starting"' in line:
                job_id = orjson.loads(line).get("job_id") or ""
                if job_id.startswith("cron:"):
                    started[job_id] += 1
    return started


def _assert_exactly_once(
    sandbox: Sandbox, ticks: list[asyncpg.Record], stream: str, workers: list[Process]
) -> None:
    done = [t for t in ticks if t["status"] == "done"]
    # one published file per completed tick: no tick exported twice, none lost
    assert _published(sandbox.exports, stream) == list(range(1, len(done) + 1))
    assert len({t["result"] for t in done}) == len(done)
    # and no tick was even started twice, by any worker
    started = _started_ticks(workers)
    assert started, "no worker logged a started tick"
    assert max(started.values()) == 1, [k for k, n in started.items() if n > 1]
    # consecutive seconds: the schedule ran without holes while workers were up
    gaps = [b["tick_at"] - a["tick_at"] for a, b in pairwise(ticks)]
    assert set(gaps) <= {timedelta(seconds=1)}, gaps


@pytest.mark.slow
async def test_three_workers_export_each_tick_exactly_once(sandbox: Sandbox) -> None:
    await _seed_settings(sandbox, 200)
    workers = [bulk_worker(sandbox, f"bulk-{i}", **EVERY_SECOND).start() for i in range(3)]
    try:

        async def enough() -> bool:
            done = [t for t in await _ticks(sandbox, "export_settings") if t["status"] == "done"]
            return len(done) >= 22

        await eventually(enough, timeout=60, interval=0.5)
    finally:
        for w in workers:
            w.stop()
    for name, stream in (
        ("export_settings", "snapshot_settings"),
        ("export_profile_types", "snapshot_profile_types"),
    ):
        ticks = await _ticks(sandbox, name)
        assert len(ticks) >= 20
        assert {t["status"] for t in ticks} == {"done"}, Counter(t["status"] for t in ticks)
        _assert_exactly_once(sandbox, ticks, stream, workers)
    # the stable name holds the newest snapshot
    latest = sandbox.exports / "latest" / "snapshot_settings.jsonl"
    newest = max(_published(sandbox.exports, "snapshot_settings"))
    assert (
        latest.read_bytes()
        == (sandbox.exports / f"snapshot_settings-{newest:012d}.jsonl").read_bytes()
    )


@pytest.mark.slow
async def test_killed_and_restarted_workers_still_run_each_tick_once(sandbox: Sandbox) -> None:
    await _seed_settings(sandbox, 200)
    workers = [bulk_worker(sandbox, f"bulk-{i}", **EVERY_SECOND).start() for i in range(2)]

    async def finished() -> int:
        return sum(t["status"] == "done" for t in await _ticks(sandbox, "export_settings"))

    async def five_more() -> None:
        target = await finished() + 5

        async def reached() -> bool:
            return await finished() >= target

        await eventually(reached, timeout=60, interval=0.2)

    try:
        for round_ in range(3):
            await five_more()  # ticks are running: kill a worker in the middle of them
            workers[round_].kill(9)  # no shutdown: whatever it held is simply gone
            workers.append(bulk_worker(sandbox, f"bulk-new-{round_}", **EVERY_SECOND).start())
        await five_more()
    finally:
        for w in workers:
            w.stop()
    ticks = await _ticks(sandbox, "export_settings")
    assert len(ticks) >= 18
    # a worker killed in the middle of a tick leaves it "running" (arq hands it to another
    # worker only after the in-progress key expires); every other tick completed once
    statuses = Counter(t["status"] for t in ticks)
    assert set(statuses) <= {"done", "running"}, statuses
    assert statuses["running"] <= 3, statuses
    started = _started_ticks(workers)
    assert max(started.values()) == 1, [k for k, n in started.items() if n > 1]
    done = [t for t in ticks if t["status"] == "done"]
    published = _published(sandbox.exports, "snapshot_settings")
    assert len(published) == len(set(published))
    assert len(done) <= len(published) <= len(done) + statuses["running"]
    gaps = [b["tick_at"] - a["tick_at"] for a, b in pairwise(ticks)]
    assert set(gaps) <= {timedelta(seconds=1)}, gaps


# -- the guard, in-process -------------------------------------------------------------------


def _ctx(engine: Any, job_id: str | None, job_try: int = 1) -> dict[str, Any]:
    return {
        "engine": engine,
        "sessions": make_sessionmaker(engine),
        "job_id": job_id,
        "job_try": job_try,
    }


def _job_id(name: str, tick: datetime) -> str:
    return f"cron:test:{name}:{int(tick.timestamp() * 1000)}"


async def test_a_tick_that_finds_the_previous_run_still_running_is_skipped(
    sandbox: Sandbox,
) -> None:
    engine = make_engine(sandbox.services.response_url)
    release = asyncio.Event()
    runs: list[str] = []

    async def slow(ctx: dict[str, Any]) -> dict[str, Any]:
        runs.append(ctx["job_id"])
        await release.wait()
        return {"ok": True}

    first, second = datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC)
    try:
        running = asyncio.create_task(
            run_guarded(
                _ctx(engine, _job_id("export_settings", first)),
                "export_settings",
                slow,
                max_tries=1,
            )
        )
        await eventually(lambda: runs)
        skipped = await run_guarded(
            _ctx(engine, _job_id("export_settings", second)), "export_settings", slow, max_tries=1
        )
        # another job is not held up by it
        other = await run_guarded(
            _ctx(engine, _job_id("export_users", second)), "export_users", _quick, max_tries=1
        )
        release.set()
        finished = await running
    finally:
        await engine.dispose()
    assert skipped["skipped"] == "overlap"
    assert other["quick"] is True
    assert finished["ok"] is True
    assert len(runs) == 1
    rows = {(r["tick_at"], r["status"]) for r in await _ticks(sandbox, "export_settings")}
    assert rows == {(first, "done"), (second, "skipped_overlap")}


async def _quick(ctx: dict[str, Any]) -> dict[str, Any]:
    return {"quick": True}


async def test_a_tick_enqueued_again_after_its_tombstone_is_gone_does_nothing(
    sandbox: Sandbox,
) -> None:
    engine = make_engine(sandbox.services.response_url)
    calls: list[int] = []

    async def count(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        return {"n": len(calls)}

    tick = datetime(2030, 1, 1, tzinfo=UTC)
    job_id = _job_id("export_settings", tick)
    assert tick_of(job_id) == tick  # the tick comes from the id, not from anyone's clock
    try:
        first = await run_guarded(_ctx(engine, job_id), "export_settings", count, max_tries=1)
        again = await run_guarded(_ctx(engine, job_id), "export_settings", count, max_tries=1)
    finally:
        await engine.dispose()
    assert first["n"] == 1
    assert again["skipped"] == "duplicate"
    assert calls == [1]


async def test_a_failed_tick_is_retried_with_backoff_then_recorded_as_failed(
    sandbox: Sandbox,
) -> None:
    from arq import Retry

    engine = make_engine(sandbox.services.response_url)

    async def broken(ctx: dict[str, Any]) -> dict[str, Any]:
        raise OSError("disk full")

    tick = datetime(2030, 1, 1, tzinfo=UTC)
    job_id = _job_id("export_settings", tick)
    try:
        with pytest.raises(Retry) as retry:
            await run_guarded(_ctx(engine, job_id, 1), "export_settings", broken, max_tries=2)
        assert [r["status"] for r in await _ticks(sandbox, "export_settings")] == ["retrying"]
        with pytest.raises(OSError, match="disk full"):
            await run_guarded(_ctx(engine, job_id, 2), "export_settings", broken, max_tries=2)
    finally:
        await engine.dispose()
    assert retry.value.defer_score is not None
    assert retry.value.defer_score > 0
    rows = await _ticks(sandbox, "export_settings")
    assert [r["status"] for r in rows] == ["failed"]


async def test_missed_ticks_are_logged_and_not_replayed(sandbox: Sandbox) -> None:
    conn = await _response(sandbox)
    last = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    await conn.execute(
        "INSERT INTO cron_ticks (name, tick_at, status, attempts) VALUES ($1, $2, 'done', 1)",
        "export_settings",
        last,
    )
    await conn.close()
    schedule = ScheduleSettings(_env_file=None, schedule_export_settings="*/1s")
    engine = make_engine(sandbox.services.response_url)
    try:
        missed = await report_missed(make_sessionmaker(engine), schedule, datetime.now(UTC))
    finally:
        await engine.dispose()
    assert 20 <= missed["export_settings"] <= 30  # the grace keeps the last few seconds out

    env = {**EVERY_SECOND, "NETSYNC_SCHEDULE_EXPORT_PROFILE_TYPES": "off"}
    started = datetime.now(UTC)
    worker = bulk_worker(sandbox, "bulk-late", **env).start()
    try:

        async def ran() -> bool:
            return len(await _ticks(sandbox, "export_settings")) >= 4

        await eventually(ran, timeout=30, interval=0.5)
    finally:
        worker.stop()
    assert "ticks missed while no worker ran" in worker.output()
    ticks = [t["tick_at"] for t in await _ticks(sandbox, "export_settings")]
    # nothing between the old tick and the worker's start: the gap was skipped, not replayed
    assert ticks[0] == last
    assert all(t >= started - timedelta(seconds=2) for t in ticks[1:])


async def test_workers_with_clocks_a_second_apart_still_run_each_tick_once(
    sandbox: Sandbox,
) -> None:
    """One real worker runs the jobs; two more enqueue the schedule as their clocks (one second
    ahead, one second behind) tell them: the behind one enqueues ticks that already finished."""
    await _seed_settings(sandbox, 20)
    schedule = ScheduleSettings(_env_file=None).model_copy(
        update={
            "schedule_export_settings": "*/1s",
            "schedule_export_profile_types": "off",
            "schedule_export_users": "off",
            "cron_namespace": sandbox.cron_namespace,
        }
    )
    settings = sandbox.response_settings(worker_poll_delay_s=0.1)
    runner = create_worker(bulk_worker_settings(settings, schedule), handle_signals=False)
    pool = redis_pool(sandbox.services.redis_url, queue_name=sandbox.bulk_queue)
    skewed = [
        (create_worker(bulk_worker_settings(settings, schedule), redis_pool=pool), skew)
        for skew in (timedelta(seconds=-1), timedelta(seconds=1))
    ]
    try:
        async with running(runner, drain=True):
            deadline = asyncio.get_running_loop().time() + 8
            while asyncio.get_running_loop().time() < deadline:
                for worker, skew in skewed:
                    await worker.run_cron(datetime.now(UTC) + skew, 0.5)
                await asyncio.sleep(0.2)
            await asyncio.sleep(
                2
            )  # let the last enqueued ticks run; the drain ends the one running
    finally:
        await pool.aclose(close_connection_pool=True)
    ticks = await _ticks(sandbox, "export_settings")
    # On a busy machine one export can outlast the second to the next tick, which is then skipped
    # by design (no overlap); what must never happen is a tick run twice or failing.
    statuses = [t["status"] for t in ticks]
    assert set(statuses) <= {"done", "skipped_overlap"}
    done = statuses.count("done")
    assert done >= 5
    assert _published(sandbox.exports, "snapshot_settings") == list(range(1, done + 1))
