"""What the importer daemon tells operators: apply metrics, liveness and readiness.

Liveness is the daemon loop's own heartbeat (``Importer.heartbeat``), moved at every pass and
every file: it must have moved within max(3 × rescan interval, 10 s). A Request database outage
does not stop the loop (it backs off and retries), so it fails readiness, not liveness: restarting
the daemon would not bring the database back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.format import FileName
from exchange.reader import ExportFile
from importer.daemon.apply import ApplyResult
from netsync import metrics
from netsync.probes import Probes

if TYPE_CHECKING:
    from importer.daemon.loop import Importer

log = logging.getLogger(__name__)


def observe_applied(export: ExportFile, outcome: ApplyResult) -> None:
    """Count one file that reached the database, and how long it took to get here."""
    stream = export.header.stream
    if outcome.duplicate:
        metrics.IMPORT_FILES_DUPLICATE.labels(stream).inc()
        return
    metrics.IMPORT_FILES_APPLIED.labels(stream).inc()
    metrics.IMPORT_CHANGES_APPLIED.labels(stream).inc(outcome.changes)
    lag = (datetime.now(UTC) - export.header.created_at).total_seconds()
    metrics.IMPORT_LAG.labels(stream).observe(max(0.0, lag))


def observe_generation(generation: int, name: FileName) -> None:
    """A newer generation of the Response database was first seen (with file ``name``)."""
    metrics.IMPORT_GENERATIONS.inc()
    metrics.IMPORT_GENERATION.set(generation)
    log.warning(
        "the Response database began a new generation (it was restored from a backup, or an"
        " operator asked): its files and snapshots now replace what the restore undid",
        extra={"generation": generation, "file": name.name},
    )


def observe_superseded(name: FileName) -> None:
    metrics.IMPORT_FILES_SUPERSEDED.labels(name.stream).inc()
    log.warning(
        "file of an older generation superseded (a restore of the Response database undid what"
        " it holds), archiving",
        extra={"file": name.name},
    )


def liveness_threshold(rescan_interval_s: float) -> float:
    return max(3 * rescan_interval_s, 10.0)


def _readable(directory: Path) -> bool:
    with os.scandir(directory):
        pass
    return True


def importer_probes(importer: Importer, engine: AsyncEngine) -> Probes:
    threshold = liveness_threshold(importer.settings.rescan_interval_s)

    def liveness() -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - importer.heartbeat
        return age <= threshold, {"last_pass_age_s": round(age, 3), "threshold_s": threshold}

    async def database() -> bool:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True

    async def exports_dir() -> bool:
        return await asyncio.to_thread(_readable, importer.exports_dir)

    async def refresh() -> None:
        age = time.monotonic() - importer.heartbeat
        metrics.IMPORT_LAST_SCAN.set(time.time() - age)

    return Probes(
        liveness=liveness,
        readiness={"database": database, "exports_dir": exports_dir},
        refresh=refresh,
    )
