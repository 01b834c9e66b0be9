"""What a fault-injection run does (``Plan``) and what it found (``Report``).

The report's figures are the ones the reliability goal is stated in: changes made and applied,
lost, applied twice, older-overwrote-newer, quarantined files by reason, server errors, and the
time the two networks took to agree after the last fault.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.importer.files import record_lines


@dataclass
class Plan:
    """What to run: sizes and which faults, with their durations."""

    changes: int = 3000
    #: The changes are spread over this long, so that every fault lands in the middle of load.
    duration_s: float = 40.0
    users: int = 30
    settings: int = 30
    clients: int = 8
    password_every: int = 20  # one change in N is a password change (hashing is the slow part)
    workers: int = 2
    #: Bulk workers running the schedule, with the settings snapshot compressed to every second.
    bulk_workers: int = 3
    kills: int = 4
    redis_outage_s: float = 5.0
    request_db_outage_s: float = 5.0
    disk_full_s: float = 4.0
    converge_timeout_s: float = 60.0

    @classmethod
    def failover(cls) -> Plan:
        """A failover alone, landing in the middle of the load (no other fault shares the run)."""
        return cls(
            changes=800,
            duration_s=12,
            users=20,
            settings=20,
            workers=2,
            bulk_workers=2,
            redis_outage_s=0,
            request_db_outage_s=0,
            disk_full_s=0,
        )


@dataclass
class Report:
    changes_made: int = 0
    changes_applied: int = 0
    lost: int = 0
    applied_twice: int = 0
    regressions: int = 0
    server_errors: int = 0
    #: 503 with Retry-After: the API saying its database is away (a failover), not a fault
    unavailable: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    faults: list[str] = field(default_factory=list)
    converge_s: float = 0.0
    duration_s: float = 0.0
    #: The compressed schedule: settings-snapshot ticks done, and snapshot files published.
    ticks_done: int = 0
    ticks_claimed: int = 0
    snapshot_files: int = 0
    #: A failover: primary lost → standby promoted, and promotion → a change applied.
    promotion_s: float | None = None
    resumed_s: float | None = None

    def lines(self) -> list[str]:
        return [
            f"changes made:              {self.changes_made}",
            # several changes of one entity in one file are written once
            f"rows written (Request):    {self.changes_applied}",
            f"lost:                      {self.lost}",
            f"applied twice:             {self.applied_twice}",
            f"older overwrote newer:     {self.regressions}",
            f"API server errors (5xx):   {self.server_errors}",
            f"API 503 + Retry-After:     {self.unavailable}",
            f"files quarantined:         {dict(self.quarantined) or 0}",
            f"snapshot ticks (1 s):      {self.ticks_done} done of {self.ticks_claimed} claimed,"
            f" {self.snapshot_files} snapshot files",
            f"faults injected:           {len(self.faults)}  ({', '.join(self.faults)})",
            *(
                [
                    f"failover:                  promoted {self.promotion_s:.1f} s after the"
                    f" kill, a change applied {self.resumed_s:.1f} s after the promotion"
                ]
                if self.promotion_s is not None and self.resumed_s is not None
                else []
            ),
            f"converged after last fault: {self.converge_s:.1f} s",
            f"total run time:            {self.duration_s:.0f} s",
        ]


def events_in_more_than_one_file(archive: Path) -> int:
    """Events carried by two different applied files in the importer's ``archive`` (a
    duplicate of one file is not that): the report's "applied twice"."""
    owners: dict[str, str] = {}
    twice = 0
    for path in sorted(archive.glob("changes-*.jsonl")):  # duplicates carry a suffix: skipped
        for line in record_lines(path.read_bytes()):
            event = line.split(b'"event_id":"', 1)[1][:36].decode()
            if event in owners and owners[event] != path.name:
                twice += 1
            owners[event] = path.name
    return twice
