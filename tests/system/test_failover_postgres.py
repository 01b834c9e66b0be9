"""PostgreSQL failover: the primary stopped with ``-m immediate`` during steady changes, its
standby promoted, nothing lost and nothing applied twice.

Real processes throughout: a primary and a synchronous streaming standby built with the machine's
own PostgreSQL binaries (``tests/pg_pair.py``), holding both networks' databases, and every
netsync process given libpq's multi-host URL with ``target_session_attrs=read-write``. The
crash cuts every connection of both networks at once; the pools' pre-ping drops the dead ones,
new connections find the promoted server, and the sync job, the sweeper and the importer retry
what died with a connection. Synchronous replication is what makes an acknowledged change
survive the crash (``docs/reliability.md`` says what it costs).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from netsync.config import to_libpq_url
from ops.migrate import upgrade
from tests.chaos.disk import unique_dir
from tests.chaos.harness import Chaos
from tests.chaos.plan import Plan
from tests.pg_pair import PgPair, pg_bindir
from tests.support import Services, make_sandbox

pytestmark = [
    pytest.mark.slow,
    pytest.mark.proof,
    pytest.mark.skipif(
        pg_bindir() is None,
        reason="needs PostgreSQL's server binaries: apt-get install postgresql",
    ),
]


@pytest.fixture
def pair() -> Iterator[PgPair]:
    pg = PgPair(unique_dir("nsp"))
    try:
        yield pg
    finally:
        pg.remove()


async def test_postgres_primary_lost_loses_nothing_applies_nothing_twice_and_converges(
    pair: PgPair, services: Services, tmp_path: Path
) -> None:
    admin = await asyncpg.connect(to_libpq_url(pair.single("primary")))
    try:
        for name in ("response", "request"):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    on_pair = Services(
        pair.url("response"), pair.url("request"), services.redis_url, uuid.uuid4().hex[:10]
    )
    await asyncio.to_thread(upgrade, "response", on_pair.response_url)
    await asyncio.to_thread(upgrade, "request", on_pair.request_url)
    sandbox = make_sandbox(tmp_path, on_pair)
    plan = Plan.failover()
    chaos = Chaos(sandbox, plan, unique_dir("nsr"))

    async def fail_over() -> None:
        stopped = time.monotonic()
        promoted = await asyncio.to_thread(pair.fail_over)
        chaos.report.faults.append("postgres primary stopped -m immediate, standby promoted")
        chaos.report.promotion_s = promoted - stopped
        chaos.report.resumed_s = await chaos.change_applied_after(promoted)

    report = await chaos.run([fail_over])
    print("\n".join(report.lines()))
    assert report.promotion_s is not None
    assert report.changes_made >= plan.changes * 0.8
    assert report.lost == 0
    assert report.applied_twice == 0
    assert report.regressions == 0
    assert not report.quarantined
    # while no server takes writes, the API answers 503 with Retry-After, never 500
    assert report.server_errors == 0
    assert report.resumed_s is not None
    assert report.resumed_s <= 15
    assert report.converge_s <= 15
