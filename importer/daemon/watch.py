"""What the daemon keeps an eye on besides applying: open sequence gaps and foreign file names.

Both are about telling an operator, not about correctness, and both need memory across scans so
that they speak once (or once per alert interval) rather than on every pass: a gap still open
after ``gap_alert_after_s`` is logged again at that interval until it closes, and a name that is
not an export name is recorded once in ``quarantined_files`` and then left alone.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert

from exchange.reader import RejectReason
from importer.daemon.failures import DB_ERRORS
from importer.daemon.files import printable
from importer.daemon.ledger import current_generation
from importer.db import RequestSessionMaker
from importer.models import QuarantinedFile
from importer.views import GapStats, open_gaps, summarise
from netsync import metrics

log = logging.getLogger(__name__)


class GapWatch:
    """Open gaps as gauges (``stats``, per-stream metrics) and repeated warnings for old ones."""

    def __init__(self, sessions: RequestSessionMaker, alert_after_s: float) -> None:
        self.sessions = sessions
        self.alert_after_s = alert_after_s
        #: Open sequence gaps as of the last check.
        self.stats = GapStats(0, 0, 0.0)
        self._alerted: dict[tuple[str, int], float] = {}
        self._streams: set[str] = set()

    async def check(self) -> GapStats:
        """Refresh ``stats``; an unreachable database leaves the last figures in place."""
        try:
            async with self.sessions() as session:
                gaps = await open_gaps(session)
                metrics.IMPORT_GENERATION.set(await current_generation(session))
        except DB_ERRORS:
            return self.stats
        now, mono = datetime.now(UTC), time.monotonic()
        keys = set()
        for gap in gaps:
            key = (gap.stream, gap.first_seq)
            keys.add(key)
            age = gap.age_s(now)
            last = self._alerted.get(key)
            if age >= self.alert_after_s and (last is None or mono - last >= self.alert_after_s):
                self._alerted[key] = mono
                log.warning(
                    "sync gap still open",
                    extra={
                        "stream": gap.stream,
                        "first_seq": gap.first_seq,
                        "last_seq": gap.last_seq,
                        "missing": gap.missing,
                        "age_s": round(age, 1),
                    },
                )
        for key in set(self._alerted) - keys:
            del self._alerted[key]
        self.stats = summarise(gaps, now)
        missing: dict[str, int] = {}
        for gap in gaps:
            missing[gap.stream] = missing.get(gap.stream, 0) + gap.missing
        self._streams |= set(missing)
        for stream in self._streams:  # a stream whose gaps closed goes back to zero
            metrics.IMPORT_OPEN_GAPS.labels(stream).set(missing.get(stream, 0))
        return self.stats


#: Foreign names logged one by one per scan; more are counted in one line.
_LOGGED_PER_SCAN = 20


class ForeignNames:
    """Names in the exports directory that are not export names: recorded once, never read.

    Dot files are skipped without a record: they are the temporary files of transfer tools
    (rsync's ``.name.XXXXXX``), which come and go with every copy.
    """

    def __init__(self, sessions: RequestSessionMaker, exports_dir: Path) -> None:
        self.sessions = sessions
        self.exports_dir = exports_dir
        self._seen: set[str] = set()

    async def record(self, names: list[str]) -> list[str]:
        """Record the names not seen before (in the database, for good); return them."""
        present = set(names)
        self._seen &= present
        new = sorted(n for n in present - self._seen if not n.startswith("."))
        self._seen |= present
        if not new:
            return []
        rows = []
        for name in new[:_LOGGED_PER_SCAN]:
            log.warning("ignoring a file that is not an export", extra={"file": printable(name)})
        if len(new) > _LOGGED_PER_SCAN:  # a flood is one line, not a hundred thousand
            log.warning(
                "ignoring more files that are not exports",
                extra={"files": len(new) - _LOGGED_PER_SCAN},
            )
        for name in new:
            try:
                size: int | None = os.lstat(self.exports_dir / name).st_size
            except OSError:
                size = None
            rows.append(
                {
                    "file_name": printable(name),
                    "stored_as": None,
                    "reason": RejectReason.NOT_AN_EXPORT_NAME.value,
                    "detail": "not an export file name: left in place, never read",
                    "size": size,
                }
            )
        stmt = insert(QuarantinedFile).on_conflict_do_nothing(
            index_elements=[QuarantinedFile.file_name],
            # a literal: PostgreSQL matches a partial index's predicate only against constants
            index_where=text(f"reason = '{RejectReason.NOT_AN_EXPORT_NAME.value}'"),
        )
        try:
            async with self.sessions() as session, session.begin():
                await (await session.connection()).execute(stmt, rows)
        except DB_ERRORS as exc:
            self._seen -= set(new)  # try again on the next scan
            log.error("could not record ignored files", extra={"error": repr(exc)})
        return new
