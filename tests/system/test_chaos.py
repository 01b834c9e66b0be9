"""The short fault-injection run: a few thousand changes, every kind of fault, nothing lost.

The long run (100,000 changes, 20+ kills, 30 s outages) is ``./run bench chaos``; its latest
figures are in ``docs/reliability.md``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.chaos.disk import mount_tmpfs, unique_dir, unmount
from tests.chaos.harness import Chaos, default_faults
from tests.chaos.plan import Plan
from tests.support import Sandbox

pytestmark = [pytest.mark.slow, pytest.mark.proof]


@pytest.fixture
def exports_on_tmpfs(sandbox: Sandbox) -> Iterator[bool]:
    mounted = mount_tmpfs(sandbox.exports)
    yield mounted
    if mounted:
        unmount(sandbox.exports)


async def test_faults_lose_nothing_apply_nothing_twice_and_the_networks_converge(
    sandbox: Sandbox, exports_on_tmpfs: bool
) -> None:
    redis_dir = unique_dir("nsc")
    plan = Plan(changes=2000, duration_s=40, users=25, settings=25, workers=2, kills=5)
    chaos = Chaos(sandbox, plan, redis_dir)
    try:
        faults = default_faults(chaos, disk=exports_on_tmpfs)
        report = await chaos.run(faults)
    finally:
        shutil.rmtree(redis_dir, ignore_errors=True)
    print("\n".join(report.lines()))
    assert report.changes_made >= plan.changes * 0.9
    assert len([f for f in report.faults if not f.startswith("(")]) == len(faults)  # all ran
    assert report.lost == 0
    assert report.applied_twice == 0
    assert report.regressions == 0
    assert report.server_errors == 0
    assert report.unavailable == 0  # no fault here takes the Response database away
    assert not report.quarantined  # no outage may make a genuine file look bad
    assert report.converge_s <= 10
    # every second a settings snapshot, from three bulk workers, some of them killed: each tick
    # ran once at most, and no tick produced two files
    assert report.ticks_done >= 20
    assert report.ticks_done <= report.snapshot_files <= report.ticks_claimed
