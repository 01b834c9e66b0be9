"""The bulk worker's periodic jobs themselves, bound by name to the schedule's entries.

What runs when is declared once in ``app.scheduling.registry`` (with ``ScheduleSettings``, the
``NETSYNC_SCHEDULE_<JOB>`` overrides); ``RUNS`` gives each bulk entry its coroutine. Every job
runs through ``jobs.ticks.run_guarded`` (exactly once per tick, no overlap, retries with backoff)
in the bulk worker (``jobs.bulk``), never in the interactive sync worker.

Missed ticks (no worker was running) are not replayed: arq schedules only from the present, and a
starting worker compares the last recorded tick of each job with the schedule and logs what was
skipped (``report_missed``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from app.db import ResponseSessionMaker
from app.scheduling.registry import BULK, Scheduled, ScheduleSettings, last_ticks
from jobs import maintenance, results, snapshots
from jobs.ticks import run_guarded

log = logging.getLogger(__name__)


Job = Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]


# -- the jobs ---------------------------------------------------------------------------------


def _snapshot(entity: str) -> Job:
    async def run(ctx: dict[str, Any]) -> dict[str, Any]:
        done = await snapshots.export_snapshot(
            ctx["engine"],
            ctx["sessions"],
            ctx["exports_dir"],
            ctx["signer"],
            entity,
            recipients=ctx["recipients"],
            generations=ctx.get("generations"),
        )
        return done.summary()

    return run


def _queues(ctx: dict[str, Any]) -> maintenance.Queues:
    cfg = ctx["settings"]
    return maintenance.Queues(sync=cfg.sync_queue, bulk=cfg.bulk_queue)


async def _export_results(ctx: dict[str, Any]) -> dict[str, Any]:
    return await results.export_results(
        ctx["redis"],
        ctx["sessions"],
        ctx["exports_dir"],
        ctx["signer"],
        _queues(ctx).names,
        recipients=ctx["recipients"],
        generations=ctx.get("generations"),
    )


async def _system_monitoring(ctx: dict[str, Any]) -> dict[str, Any]:
    schedule: ScheduleSettings = ctx["schedule"]
    return await maintenance.system_monitoring(
        ctx["redis"],
        ctx["sessions"],
        ctx["exports_dir"],
        _queues(ctx),
        stale_after_s=schedule.monitoring_stale_after_s,
    )


async def _cache_maintenance(ctx: dict[str, Any]) -> dict[str, Any]:
    return dict(await maintenance.cache_maintenance(ctx["redis"], _queues(ctx)))


async def _daily_stats(ctx: dict[str, Any]) -> dict[str, Any]:
    """Statistics of the day before the run (02:00 runs sum up yesterday)."""
    schedule: ScheduleSettings = ctx["schedule"]
    day = (datetime.now(schedule.tz) - timedelta(days=1)).date()
    return await maintenance.daily_stats(ctx["sessions"], day, schedule.tz)


async def _retention_cleanup(ctx: dict[str, Any]) -> dict[str, Any]:
    schedule: ScheduleSettings = ctx["schedule"]
    return dict(
        await maintenance.retention_cleanup(
            ctx["sessions"], ctx["exports_dir"], schedule.archive_path, schedule.retention_days
        )
    )


#: Each bulk entry of the registry (``app.scheduling.registry``) bound to its coroutine.
RUNS: dict[str, Job] = {
    "export_settings": _snapshot("setting"),
    "export_users": _snapshot("user"),
    "export_profile_types": _snapshot("profile_type"),
    "export_results": _export_results,
    "system_monitoring": _system_monitoring,
    "cache_maintenance": _cache_maintenance,
    "daily_stats": _daily_stats,
    "retention_cleanup": _retention_cleanup,
}


def job_function(job: Scheduled) -> Job:
    """The arq coroutine of a periodic job: its tick guard around its work."""
    run = RUNS[job.name]

    async def periodic(ctx: dict[str, Any]) -> dict[str, Any]:
        return await run_guarded(ctx, job.name, run, max_tries=job.max_tries)

    periodic.__qualname__ = periodic.__name__ = job.name
    return periodic


#: Ticks this recent may still be on their way through another worker: not "missed" yet.
MISSED_GRACE = timedelta(seconds=5)


async def report_missed(
    sessions: ResponseSessionMaker, schedule: ScheduleSettings, now: datetime
) -> dict[str, int]:
    """Log (and return) how many ticks of each job passed with no worker to run them."""
    async with sessions() as session:
        last = await last_ticks(session)
    missed: dict[str, int] = {}
    for job in BULK:
        fields = schedule.fields(job.name)
        previous = last.get(job.name)
        if fields is None or previous is None:
            continue
        skipped = list(
            fields.ticks(
                previous.astimezone(schedule.tz),
                now.astimezone(schedule.tz) - MISSED_GRACE,
                limit=10_000,
            )
        )
        if skipped:
            missed[job.name] = len(skipped)
            log.warning(
                "ticks missed while no worker ran: skipped, not replayed",
                extra={
                    "job": job.name,
                    "missed": len(skipped),
                    "at_least": len(skipped) >= 10_000,
                    "last_tick": previous.isoformat(),
                    "first_missed": skipped[0].isoformat(),
                },
            )
    return missed
