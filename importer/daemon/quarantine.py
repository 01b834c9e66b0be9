"""Refused files: moved aside with a sidecar saying why, and a row in ``quarantined_files``.

A file is refused for its content, which does not need the database; so a file can be refused
while the database is down. Its sidecar (``<name>.reason.json``) is written first and is the
record of last resort: a row that could not be written then is written from the sidecar later
(``reconcile``: on the first scan after start, and on the first scan after a failed write), so
the quarantine listing and ``GET /api/v1/quarantine`` never miss a refused file for good.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from exchange.intake import RejectedFile, RejectReason
from importer.daemon.failures import DB_ERRORS
from importer.daemon.files import (
    MAX_SIDECAR_BYTES,
    SIDECAR_SUFFIX,
    FileMover,
    printable,
    read_bounded,
)
from importer.db import RequestSessionMaker
from importer.models import QuarantinedFile
from netsync import metrics

log = logging.getLogger(__name__)

# Every reason's series exists at 0 from the start, so the first refusal of a kind is an
# increase Prometheus sees (the NetsyncFilesQuarantined alert), not a series that appears at 1.
for _reason in RejectReason:
    metrics.IMPORT_FILES_QUARANTINED.labels(_reason.value)

#: Names looked up per query while reconciling (well under PostgreSQL's bind parameter limit).
_CHUNK = 5000


class Quarantine:
    def __init__(self, sessions: RequestSessionMaker, files: FileMover) -> None:
        self.sessions = sessions
        self.files = files
        #: Whether some sidecar may lack its row: true at start, and after a failed write.
        self.unrecorded = True

    async def put(self, name: str, rejected: RejectedFile) -> bool:
        """Move the file aside and record why; False when another importer took it first."""
        detail = printable(rejected.detail.replace("\x00", "\\0"))
        evidence = rejected.evidence
        rejected = RejectedFile(rejected.reason, detail, inode=rejected.inode)
        rejected.evidence = evidence
        try:
            moved = await asyncio.to_thread(self.files.move_to_quarantine, name, rejected)
        except OSError as exc:  # our own directory failed: the file stays, and is seen again
            log.error("could not quarantine a file", extra={"file": name, "error": repr(exc)})
            return False
        if moved is None:
            return False
        stored_as, size = moved
        metrics.IMPORT_FILES_QUARANTINED.labels(rejected.reason.value).inc()
        log.warning(
            "quarantined file",
            extra={"file": name, "reason": rejected.reason.value, "detail": rejected.detail},
        )
        try:
            async with self.sessions() as session, session.begin():
                session.add(
                    QuarantinedFile(
                        file_name=name,
                        stored_as=stored_as,
                        reason=rejected.reason.value,
                        detail=rejected.detail,
                        size=size,
                    )
                )
        except DB_ERRORS as exc:  # the sidecar still tells why; the row follows (reconcile)
            self.unrecorded = True
            log.error("could not record quarantined file", extra={"file": name, "error": repr(exc)})
        return True

    async def reconcile(self) -> int:
        """Write the rows of sidecars that have none; return how many were written."""
        if not self.unrecorded:
            return 0
        sidecars = await asyncio.to_thread(read_sidecars, self.files.quarantine_dir)
        written = 0
        try:
            async with self.sessions() as session, session.begin():
                names = sorted(sidecars)
                for start in range(0, len(names), _CHUNK):
                    chunk = names[start : start + _CHUNK]
                    known = set(
                        await session.scalars(
                            select(QuarantinedFile.stored_as).where(
                                QuarantinedFile.stored_as.in_(chunk)
                            )
                        )
                    )
                    rows = [QuarantinedFile(**sidecars[n]) for n in chunk if n not in known]
                    session.add_all(rows)
                    written += len(rows)
        except DB_ERRORS as exc:
            log.error("could not reconcile the quarantine", extra={"error": repr(exc)})
            return 0
        self.unrecorded = False
        if written:
            log.warning("quarantined files recorded from their sidecars", extra={"files": written})
        return written


def read_sidecars(directory: Path) -> dict[str, dict[str, Any]]:
    """The rows the readable sidecars of ``directory`` describe, by ``stored_as``.

    Each is read without following links and only if it is a small regular file: a planted
    link to ``/dev/zero`` or a huge file costs nothing."""
    found: dict[str, dict[str, Any]] = {}
    for path in directory.glob(f"*{SIDECAR_SUFFIX}"):
        try:
            data = read_bounded(path, MAX_SIDECAR_BYTES)
            if data is None:
                raise ValueError("not a small regular file")
            row = _fields(orjson.loads(data))
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError: ValueError
            log.warning(
                "unreadable quarantine sidecar", extra={"file": path.name, "error": repr(exc)}
            )
            continue
        found[row["stored_as"]] = row
    return found


def _fields(sidecar: dict[str, Any]) -> dict[str, Any]:
    """A ``quarantined_files`` row from a sidecar (``importer.daemon.files.FileMover`` writes
    them)."""
    stored_as = printable(str(sidecar["stored_as"]))
    size = sidecar.get("size")
    row: dict[str, Any] = {
        "file_name": printable(str(sidecar.get("file") or stored_as)),
        "stored_as": stored_as,
        "reason": printable(str(sidecar["reason"]))[:32],
        "detail": printable(str(sidecar.get("detail", ""))),
        "size": size if isinstance(size, int) and 0 <= size < 2**63 else None,
    }
    if isinstance(sidecar.get("quarantined_at"), str):
        when = datetime.fromisoformat(sidecar["quarantined_at"])
        if when.tzinfo is not None and 1970 <= when.year <= 9999:
            row["quarantined_at"] = when
    return row
