"""Redis Sentinel: the primary killed with SIGKILL during steady changes, nothing lost.

Real processes throughout: a Redis primary, its replica and three Sentinels (each side with its
own password), the Response API, two sync workers, the bulk workers, the importer and the Request
API, all given the Sentinel form of ``NETSYNC_REDIS_URL``. A change accepted while Redis was
failing over is still in the outbox, so the sweeper exports it once a worker reaches the new
primary: no change is lost, none is applied twice, the API answers no 5xx, and a change made
after the promotion is applied within seconds (``docs/reliability.md`` has the figures).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.disk import unique_dir
from tests.chaos.harness import Chaos
from tests.chaos.plan import Plan
from tests.sentinel import SentinelGroup
from tests.support import Sandbox

pytestmark = [pytest.mark.slow, pytest.mark.proof]


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    group = SentinelGroup(unique_dir("nss"))
    try:
        yield group
    finally:
        group.remove()


async def test_redis_primary_killed_loses_nothing_and_jobs_resume_within_seconds(
    sandbox: Sandbox, sentinel_group: SentinelGroup
) -> None:
    plan = Plan.failover()
    chaos = Chaos(sandbox, plan, sentinel_group.root, redis=lambda: sentinel_group)
    report = await chaos.run([chaos.redis_failover])
    print("\n".join(report.lines()))
    assert report.faults
    assert report.promotion_s is not None
    assert report.changes_made >= plan.changes * 0.9
    assert report.lost == 0
    assert report.applied_twice == 0
    assert report.regressions == 0
    assert report.server_errors == 0
    assert report.unavailable == 0  # Redis away: changes are accepted all the same
    assert not report.quarantined
    assert report.resumed_s is not None
    assert report.resumed_s <= 10
    assert report.converge_s <= 15
