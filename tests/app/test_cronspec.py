"""The schedule syntax operators write in ``NETSYNC_SCHEDULE_<JOB>``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.scheduling.cronspec import ScheduleError, parse
from app.scheduling.registry import BULK, ScheduleSettings


def _next(spec: str, after: datetime, count: int = 3) -> list[datetime]:
    fields = parse(spec)
    assert fields is not None
    return list(fields.ticks(after, datetime(2100, 1, 1, tzinfo=UTC), limit=count))


START = datetime(2026, 3, 2, 1, 59, 58, 500_000, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("*/60s", ["02:00:00", "02:01:00", "02:02:00"]),
        ("*/120s", ["02:00:00", "02:02:00", "02:04:00"]),
        ("every 5m", ["02:00:00", "02:05:00", "02:10:00"]),
        ("*/1s", ["01:59:59", "02:00:00", "02:00:01"]),
        ("0 * * * *", ["02:00:00", "03:00:00", "04:00:00"]),
        ("0 3 * * *", ["03:00:00", "03:00:00", "03:00:00"]),
        ("*/20 * * * * *", ["02:00:00", "02:00:20", "02:00:40"]),
    ],
)
def test_schedules_tick_when_the_docs_say(spec: str, expected: list[str]) -> None:
    assert [t.strftime("%H:%M:%S") for t in _next(spec, START)] == expected


def test_weekdays_follow_crontab_numbering() -> None:
    ticks = _next("0 9 * * 0", START, 2)  # Sundays
    assert [t.strftime("%a %d") for t in ticks] == ["Sun 08", "Sun 15"]


@pytest.mark.parametrize("spec", ["*/7s", "*/90s", "*/5h", "61 * * * *", "1 2 3", "soon", ""])
def test_schedules_arq_cannot_run_are_refused_with_a_reason(spec: str) -> None:
    with pytest.raises(ScheduleError):
        parse(spec)


def test_off_disables_a_job_and_defaults_cover_every_job() -> None:
    assert parse("off") is None
    schedule = ScheduleSettings(_env_file=None)
    assert {job.name for job in BULK} == {
        "export_settings",
        "export_users",
        "export_profile_types",
        "export_results",
        "system_monitoring",
        "cache_maintenance",
        "daily_stats",
        "retention_cleanup",
    }
    for job in BULK:
        assert schedule.fields(job.name) is not None
