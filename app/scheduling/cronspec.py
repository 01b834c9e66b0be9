"""The schedule syntax of ``NETSYNC_SCHEDULE_<JOB>``, turned into arq's cron fields.

Three forms (see ``docs/schedule.md``):

* ``*/60s``, ``*/5m``, ``*/2h`` (or ``every 60s``): a fixed interval aligned to the clock. arq
  schedules by calendar fields, not intervals, so the interval must divide a minute (seconds), an
  hour (minutes) or a day (hours): ``*/120s`` runs at every even minute, ``*/7s`` is refused.
* five cron fields ``minute hour day month weekday`` (``0 2 * * *`` = daily at 02:00), or six with
  seconds first (``*/10 * * * * *``). Each field takes ``*``, ``N``, ``A-B``, ``A,B``, ``*/S`` or
  ``A-B/S``; weekday is 0-7 with 0 and 7 both Sunday, as in crontab.
* ``off``: the job is not scheduled (it can still be run on demand).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from arq.cron import next_cron

_INTERVAL = re.compile(r"^(?:\*/|every\s+)(\d+)\s*([smh])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
# (name, lowest, highest) of each cron field in six-field order
_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 7),
)


class ScheduleError(ValueError):
    """A schedule string we cannot run; the message says why."""


@dataclass(frozen=True)
class CronFields:
    """arq's ``cron()`` keyword arguments; ``None`` means any value."""

    second: frozenset[int] | None = frozenset({0})
    minute: frozenset[int] | None = None
    hour: frozenset[int] | None = None
    day: frozenset[int] | None = None
    month: frozenset[int] | None = None
    weekday: frozenset[int] | None = None

    def as_kwargs(self) -> dict[str, set[int] | None]:
        return {
            name: (set(value) if value is not None else None)
            for name, value in (
                ("second", self.second),
                ("minute", self.minute),
                ("hour", self.hour),
                ("day", self.day),
                ("month", self.month),
                ("weekday", self.weekday),
            )
        }

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment`` (aware), in ``moment``'s time zone."""
        # arq's next_cron starts one second later and snaps to ``microsecond``: whole seconds
        return next_cron(moment, microsecond=0, **self.as_kwargs())

    def ticks(self, after: datetime, before: datetime, *, limit: int) -> Iterator[datetime]:
        """Ticks in ``(after, before)``, at most ``limit`` of them."""
        tick = self.next_after(after)
        for _ in range(limit):
            if tick >= before:
                return
            yield tick
            tick = self.next_after(tick)


def _range(text: str, low: int, high: int, name: str) -> set[int]:
    step = 1
    if "/" in text:
        text, _, step_text = text.partition("/")
        if not step_text.isdigit() or int(step_text) < 1:
            raise ScheduleError(f"{name}: bad step {step_text!r}")
        step = int(step_text)
    if text == "*":
        start, end = low, high
    elif "-" in text:
        a, _, b = text.partition("-")
        if not (a.isdigit() and b.isdigit()):
            raise ScheduleError(f"{name}: bad range {text!r}")
        start, end = int(a), int(b)
    elif text.isdigit():
        start = end = int(text)
        if step != 1:
            end = high
    else:
        raise ScheduleError(f"{name}: {text!r} is not a number, range or *")
    if not (low <= start <= end <= high):
        raise ScheduleError(f"{name}: {text!r} is outside {low}-{high}")
    return set(range(start, end + 1, step))


def _field(text: str, name: str, low: int, high: int) -> frozenset[int] | None:
    if text == "*":
        return None
    values: set[int] = set()
    for part in text.split(","):
        values |= _range(part, low, high, name)
    if name == "weekday":  # crontab: 0 and 7 are Sunday; arq (Python): Monday is 0
        values = {(v - 1) % 7 for v in values}
    return frozenset(values)


def _interval(seconds: int) -> CronFields:
    if seconds < 1:
        raise ScheduleError("an interval is at least one second")
    if seconds < 60:
        if 60 % seconds:
            raise ScheduleError(f"{seconds}s does not divide a minute")
        return CronFields(second=frozenset(range(0, 60, seconds)))
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        if rest or 60 % minutes:
            raise ScheduleError(f"{seconds}s is not a whole number of minutes dividing an hour")
        return CronFields(minute=None if minutes == 1 else frozenset(range(0, 60, minutes)))
    hours, rest = divmod(seconds, 3600)
    if rest or 24 % hours:
        raise ScheduleError(f"{seconds}s is not a whole number of hours dividing a day")
    return CronFields(
        minute=frozenset({0}), hour=None if hours == 1 else frozenset(range(0, 24, hours))
    )


def parse(spec: str) -> CronFields | None:
    """Parse one schedule; ``None`` for ``off``; ``ScheduleError`` for anything else unsound."""
    text = " ".join(spec.strip().lower().split())
    if text in {"off", "never", "disabled"}:
        return None
    match = _INTERVAL.fullmatch(text)
    if match:
        return _interval(int(match[1]) * _UNIT_S[match[2]])
    parts = text.split(" ")
    if len(parts) == 5:
        parts = ["0", *parts]
    if len(parts) != 6:
        raise ScheduleError(
            f"{spec!r}: use */<n>s|m|h, five or six cron fields, or off (see docs/schedule.md)"
        )
    values = {
        name: _field(part, name, low, high)
        for part, (name, low, high) in zip(parts, _FIELDS, strict=True)
    }
    return CronFields(**values)
