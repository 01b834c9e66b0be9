"""Fault injection over the whole running system, and the figures that prove nothing was lost.

The harness runs the real processes (Response API, workers, importer, Request API) against real
PostgreSQL and a Redis of its own (so it can stop it), drives a steady load of changes through the
Response API, injects faults, then waits for the two databases to agree and reports:

- changes made (accepted by the API) and changes applied (visible in the Request database),
- lost (an accepted version never reached the Request side), applied twice (an event in more than
  one applied file), older-overwrote-newer (a version seen to go down on the Request side),
- files quarantined by reason, API server errors, and the time to converge after the last fault.

``bench/chaos.py`` runs the long version; ``tests/system/test_chaos.py`` a short one in the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import asyncpg
import httpx

from netsync.config import to_libpq_url
from ops.embedded import EmbeddedRedis
from tests.chaos.disk import fill
from tests.chaos.plan import Plan, Report, events_in_more_than_one_file
from tests.processes import (
    Process,
    bulk_worker,
    importer,
    request_api,
    response_api,
    wait_http,
    worker,
)
from tests.sentinel import SentinelGroup
from tests.support import Sandbox, database_refusing, free_port

ADMIN_PASSWORD = "chaos bootstrap phrase"


class RedisServers(Protocol):
    """What the harness needs of its Redis: one server (``EmbeddedRedis``) or a group."""

    def url(self) -> str: ...
    def stop(self) -> None: ...


class Chaos:
    def __init__(
        self,
        sandbox: Sandbox,
        plan: Plan,
        redis_dir: Path,
        redis: Callable[[], RedisServers] | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.plan = plan
        self.redis_dir = redis_dir
        self._new_redis = redis or (lambda: EmbeddedRedis(redis_dir))
        self.redis: RedisServers | None = None
        self.headers: dict[str, str] = {}
        self.report = Report()
        self.procs: dict[str, Process] = {}
        self._kills = 0
        #: "user:<id>" / "setting:<id>" -> highest version the API accepted
        self.accepted: dict[str, int] = {}
        #: the same keys -> highest version seen on the Request side
        self.seen: dict[str, int] = {}
        self.users: list[str] = []
        self.settings: dict[str, str] = {}  # key -> id
        self.api_port = free_port()
        self.request_port = free_port()
        self._stop_load = asyncio.Event()

    # -- processes ------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        assert self.redis is not None
        return {
            "NETSYNC_REDIS_URL": self.redis.url(),
            "NETSYNC_JOB_MAX_TRIES": "1000",
            "NETSYNC_SCHEDULE_EXPORT_SETTINGS": "*/1s",
        }

    def _start(self, name: str, factory: Callable[[], Process]) -> None:
        self.procs[name] = factory().start()

    def start_processes(self) -> None:
        sb = self.sandbox
        self._start("response-api", lambda: response_api(sb, self.api_port, **self.env))
        for i in range(self.plan.workers):
            self._start(f"worker-{i}", lambda i=i: worker(sb, f"worker-{i}", **self.env))  # type: ignore[misc]
        for i in range(self.plan.bulk_workers):
            self._start(f"bulk-{i}", lambda i=i: bulk_worker(sb, f"bulk-{i}", **self.env))  # type: ignore[misc]
        self._start("importer", lambda: importer(sb, **self.env))
        self._start("request-api", lambda: request_api(sb, self.request_port, **self.env))

    def stop_processes(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    # -- load -----------------------------------------------------------------------------

    async def _change(
        self, client: httpx.AsyncClient, headers: dict[str, str], n: int
    ) -> tuple[str, httpx.Response]:
        """One change: mostly cheap ones (a user's email, a setting's value), some passwords."""
        if n % self.plan.password_every == 0:
            uid = random.choice(self.users)
            return f"user:{uid}", await client.post(
                f"/api/v1/users/{uid}/reset-password",
                json={"new_password": f"chaos pass phrase {n}"},
                headers=headers,
            )
        if n % 2:
            uid = random.choice(self.users)
            return f"user:{uid}", await client.patch(
                f"/api/v1/users/{uid}", json={"email": f"u{n}@example.org"}, headers=headers
            )
        key = random.choice(list(self.settings))
        return f"setting:{self.settings[key]}", await client.put(
            f"/api/v1/settings/{key}", json={"value": {"n": n}}, headers=headers
        )

    async def _client(
        self, client: httpx.AsyncClient, headers: dict[str, str], budget: list[int], pace: float
    ) -> None:
        loop = asyncio.get_running_loop()
        while budget[0] > 0 and not self._stop_load.is_set():
            budget[0] -= 1
            started = loop.time()
            try:
                entity, response = await self._change(client, headers, budget[0])
            except httpx.TransportError:
                self.report.server_errors += 1
                continue
            if response.status_code == 503 and "Retry-After" in response.headers:
                self.report.unavailable += 1
            elif response.status_code >= 500:
                self.report.server_errors += 1
            elif response.status_code == 200:
                version = int(response.json()["version"])
                self.accepted[entity] = max(self.accepted.get(entity, 0), version)
                self.report.changes_made += 1
            await asyncio.sleep(max(0.0, pace - (loop.time() - started)))

    async def load(self, headers: dict[str, str]) -> None:
        budget = [self.plan.changes]
        pace = self.plan.clients * self.plan.duration_s / self.plan.changes
        limits = httpx.Limits(max_connections=self.plan.clients)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.api_port}", timeout=30, limits=limits
        ) as client:
            await asyncio.gather(
                *(self._client(client, headers, budget, pace) for _ in range(self.plan.clients))
            )

    # -- observation ----------------------------------------------------------------------

    async def _request_versions(self) -> dict[str, int] | None:
        try:
            conn = await asyncpg.connect(to_libpq_url(self.sandbox.services.request_url), timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return None
        try:
            rows = await conn.fetch(
                "SELECT 'user:' || id AS id, version FROM synced_users"
                " UNION ALL SELECT 'setting:' || id, version FROM synced_settings"
            )
            return {r["id"]: r["version"] for r in rows}
        except (OSError, asyncpg.PostgresError):
            return None
        finally:
            await conn.close()

    async def watch_regressions(self) -> None:
        """Sample the Request side; a version that goes down is an older value winning."""
        while True:
            versions = await self._request_versions()
            for uid, version in (versions or {}).items():
                if version < self.seen.get(uid, 0):
                    self.report.regressions += 1
                self.seen[uid] = max(self.seen.get(uid, 0), version)
            await asyncio.sleep(0.25)

    # -- faults ---------------------------------------------------------------------------

    async def kill_random(self) -> None:
        """kill -9 a sync worker, a bulk worker or the importer, and restart it.

        The kinds take turns (a random process of each kind), so even a short run kills each
        kind: picked uniformly among the processes, the one importer could go untouched.
        """
        kinds = ("worker", "bulk", "importer")
        kind = kinds[self._kills % len(kinds)]
        self._kills += 1
        name = random.choice([n for n in self.procs if n.startswith(kind)])
        self.procs[name].kill()
        self.report.faults.append(f"kill -9 {name}")
        await asyncio.sleep(random.uniform(0.2, 1.0))
        old = self.procs[name]
        self.procs[name] = Process(old.name, old.argv, old.env, self.sandbox.root).start()

    async def redis_outage(self) -> None:
        assert isinstance(self.redis, EmbeddedRedis)
        self.redis.stop()
        self.report.faults.append(f"redis down {self.plan.redis_outage_s:.0f}s")
        await asyncio.sleep(self.plan.redis_outage_s)
        self.redis = EmbeddedRedis(self.redis_dir)

    async def redis_failover(self) -> None:
        """SIGKILL the Redis primary of a Sentinel group; the Sentinels promote its replica.

        Records how long the promotion took, then makes one change and records how long after
        the promotion it reached the Request side: the jobs, the wake-up and the sweeper all
        go through Redis, so that is when the sync has resumed.
        """
        group = self.redis
        assert isinstance(group, SentinelGroup)
        killed = time.monotonic()
        old = group.kill_primary()
        self.report.faults.append(f"redis primary {old} kill -9")
        promoted = await group.wait_promotion(old)
        self.report.promotion_s = promoted - killed
        self.report.resumed_s = await self.change_applied_after(promoted)

    async def change_applied_after(self, moment: float) -> float:
        """Make one change (retried while the API answers 5xx, each one counted) and return how
        long after ``moment`` it was applied on the Request side (inf: not within the timeout)."""
        key = random.choice(list(self.settings))
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.api_port}", timeout=30
        ) as client:
            while True:
                response = await client.put(
                    f"/api/v1/settings/{key}",
                    json={"value": "after failover"},
                    headers=self.headers,
                )
                if response.status_code < 500:
                    break
                if response.status_code == 503 and "Retry-After" in response.headers:
                    self.report.unavailable += 1
                else:
                    self.report.server_errors += 1
                await asyncio.sleep(0.1)
        response.raise_for_status()
        entity, version = f"setting:{self.settings[key]}", int(response.json()["version"])
        self.accepted[entity] = max(self.accepted.get(entity, 0), version)
        self.report.changes_made += 1
        while (await self._request_versions() or {}).get(entity, 0) < version:
            if time.monotonic() - moment > self.plan.converge_timeout_s:
                return float("inf")
            await asyncio.sleep(0.05)
        return time.monotonic() - moment

    async def request_db_outage(self) -> None:
        """The Request database refuses connections (and loses the open ones) for a while."""
        async with database_refusing(self.sandbox.services.request_url):
            self.report.faults.append(f"request db down {self.plan.request_db_outage_s:.0f}s")
            await asyncio.sleep(self.plan.request_db_outage_s)

    async def disk_full(self) -> None:
        """Fill the exports file system (a small tmpfs) until writes fail, then free it."""
        filler = self.sandbox.exports / ".filler"
        await asyncio.to_thread(fill, filler)
        self.report.faults.append(f"exports disk full {self.plan.disk_full_s:.0f}s")
        await asyncio.sleep(self.plan.disk_full_s)
        filler.unlink()

    # -- the run --------------------------------------------------------------------------

    async def _admin(self, client: httpx.AsyncClient) -> dict[str, str]:
        await wait_http(f"http://127.0.0.1:{self.api_port}/ready", timeout=60)
        token = await client.post(
            "/api/v1/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD}
        )
        token.raise_for_status()
        return {"Authorization": f"Bearer {token.json()['access_token']}"}

    async def run(self, faults: list[Callable[[], Awaitable[None]]]) -> Report:
        started = time.monotonic()
        self.redis = self._new_redis()
        bootstrap = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.bootstrap",
            env=self.sandbox.env(NETSYNC_ADMIN_PASSWORD=ADMIN_PASSWORD, **self.env),
        )
        if await bootstrap.wait() != 0:
            raise RuntimeError("bootstrap failed")
        self.start_processes()
        watcher = asyncio.create_task(self.watch_regressions())
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.api_port}") as client:
                headers = self.headers = await self._admin(client)
                for i in range(self.plan.users):
                    created = await client.post(
                        "/api/v1/users",
                        json={"username": f"chaos{i:03d}", "password": "chaos pass phrase"},
                        headers=headers,
                    )
                    created.raise_for_status()
                    self.users.append(created.json()["id"])
                    self.accepted[f"user:{created.json()['id']}"] = 1
                for i in range(self.plan.settings):
                    made = await client.post(
                        "/api/v1/settings",
                        json={"key": f"chaos.s{i:03d}", "value": 0},
                        headers=headers,
                    )
                    made.raise_for_status()
                    self.settings[f"chaos.s{i:03d}"] = made.json()["id"]
                    self.accepted[f"setting:{made.json()['id']}"] = 1
                load = asyncio.create_task(self.load(headers))
                outages = self.plan.redis_outage_s + self.plan.request_db_outage_s
                gap = max(0.5, (self.plan.duration_s - outages - self.plan.disk_full_s)) / (
                    len(faults) + 1
                )
                for fault in faults:
                    if load.done():
                        break
                    # faults at random moments spread over the whole run (a mean gap of
                    # ``gap``: the last fault lands near the end of the load, not halfway)
                    await asyncio.sleep(random.uniform(0.5, 1.5) * gap)
                    await fault()
                await load
            # Agreement cannot come before the last change was made, nor before the last fault
            # ended: count from whichever came later.
            self.report.converge_s = await self._converge(time.monotonic())
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self.stop_processes()
            if self.redis is not None:
                self.redis.stop()
        await self._tally()
        self.report.duration_s = time.monotonic() - started
        return self.report

    async def _converge(self, last_fault: float) -> float:
        deadline = time.monotonic() + self.plan.converge_timeout_s
        while time.monotonic() < deadline:
            versions = await self._request_versions() or {}
            if all(versions.get(uid, 0) >= v for uid, v in self.accepted.items()):
                return time.monotonic() - last_fault
            await asyncio.sleep(0.1)
        return float("inf")

    async def _tally(self) -> None:
        versions = await self._request_versions() or {}
        self.report.lost = sum(1 for uid, v in self.accepted.items() if versions.get(uid, 0) < v)
        conn = await asyncpg.connect(to_libpq_url(self.sandbox.services.request_url))
        try:
            applied = await conn.fetchval(
                "SELECT coalesce(sum(applied_changes), 0) FROM import_ledger"
            )
            self.report.changes_applied = int(applied)
            for row in await conn.fetch(
                "SELECT reason, count(*) AS n FROM quarantined_files GROUP BY reason"
            ):
                self.report.quarantined[row["reason"]] = row["n"]
        finally:
            await conn.close()
        self.report.applied_twice = events_in_more_than_one_file(self.sandbox.archive)
        conn = await asyncpg.connect(to_libpq_url(self.sandbox.services.response_url))
        try:
            ticks = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'done') AS done,"
                " count(*) FILTER (WHERE status <> 'skipped_overlap') AS claimed"
                " FROM cron_ticks WHERE name = 'export_settings'"
            )
            self.report.ticks_done, self.report.ticks_claimed = ticks["done"], ticks["claimed"]
            self.report.snapshot_files = int(
                await conn.fetchval(
                    "SELECT count(*) FROM export_files WHERE stream = 'snapshot_settings'"
                    " AND published_at IS NOT NULL"
                )
            )
        finally:
            await conn.close()


def default_faults(chaos: Chaos, *, disk: bool) -> list[Callable[[], Awaitable[None]]]:
    plan = chaos.plan
    faults: list[Callable[[], Awaitable[None]]] = [chaos.kill_random for _ in range(plan.kills)]
    faults.insert(len(faults) // 3, chaos.redis_outage)
    faults.insert(2 * len(faults) // 3, chaos.request_db_outage)
    if disk:
        faults.append(chaos.disk_full)
    return faults
