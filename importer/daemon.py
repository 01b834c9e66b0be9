"""The importer daemon: watch the exports directory, apply every genuine file exactly once.

File-system events are only a wake-up. Correctness comes from scanning the directory: at start-up
(files that arrived while the daemon was down), after every event batch, and every
``rescan_interval_s`` (events are lost on queue overflow and never arrive on NFS or Docker Desktop
mounts; ``force_polling`` covers those). A scan applies files in sequence order per stream.

Each file is read and verified off the event loop, applied in one transaction with its ledger row,
then moved to the archive. A file that fails verification is moved to the quarantine directory with
a sidecar ``.reason.json`` and a row in ``quarantined_files``; the daemon carries on. When the
database is unreachable nothing is quarantined: the scan stops and is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from watchfiles import Change, awatch

from exchange.format import (
    LATEST_DIRNAME,
    RESULTS_STREAM,
    SNAPSHOT_STREAMS,
    STAGING_DIRNAME,
    FileName,
    parse_file_name,
)
from exchange.reader import ExportFile, RejectedFile, read_export
from exchange.signing import Keyring
from exchange.streaming import open_export
from importer.apply import apply_export
from importer.config import RequestSettings
from importer.db import RequestSessionMaker
from importer.models import QuarantinedFile
from importer.probes import observe_applied
from importer.snapshots import apply_streamed
from netsync import metrics
from netsync.logging import correlation_id

log = logging.getLogger(__name__)

_DB_ERRORS = (OperationalError, InterfaceError, DBAPIError, OSError, ConnectionError)
#: Streams read in one streaming pass (``importer.snapshots``) instead of in memory.
_STREAMED = frozenset({*SNAPSHOT_STREAMS.values(), RESULTS_STREAM})


@dataclass
class ScanResult:
    applied: int = 0
    duplicates: int = 0
    quarantined: int = 0
    changes: int = 0
    ignored: list[str] = field(default_factory=list)


class DatabaseUnavailable(Exception):
    """The Request database did not answer; retry later, quarantine nothing."""


class Importer:
    def __init__(
        self, settings: RequestSettings, sessions: RequestSessionMaker, keyring: Keyring
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.keyring = keyring
        self.exports_dir = settings.exports_path
        self.archive_dir = settings.archive_path
        self.quarantine_dir = settings.quarantine_path
        self._wake = asyncio.Event()
        self._ignored: set[str] = set()
        self._own_entries = {
            STAGING_DIRNAME,
            LATEST_DIRNAME,
            self.archive_dir.name,
            self.quarantine_dir.name,
        }
        #: ``time.monotonic()`` of the loop's last pass or file: its liveness (``importer.probes``)
        self.heartbeat = time.monotonic()

    def prepare(self) -> None:
        for path in (self.exports_dir, self.archive_dir, self.quarantine_dir):
            path.mkdir(parents=True, exist_ok=True)

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.prepare()
        watcher = asyncio.create_task(self._watch(stop), name="importer-watch")
        backoff = 0.1
        log.info(
            "importer watching",
            extra={"dir": str(self.exports_dir), "polling": self.settings.force_polling},
        )
        try:
            while not stop.is_set():
                self._wake.clear()
                self.heartbeat = time.monotonic()
                try:
                    await self.scan_once(stop)
                    backoff = 0.1
                    timeout = self.settings.rescan_interval_s
                except DatabaseUnavailable as exc:
                    log.warning("request database unavailable, retrying", extra={"error": str(exc)})
                    timeout = backoff
                    backoff = min(backoff * 2, 5.0)
                await _wait_any(self._wake, stop, timeout)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self, stop: asyncio.Event) -> None:
        def ours(change: Change, path: str) -> bool:
            return change != Change.deleted and parse_file_name(os.path.basename(path)) is not None

        while not stop.is_set():
            try:
                async for _ in awatch(
                    self.exports_dir,
                    watch_filter=ours,
                    debounce=self.settings.watch_debounce_ms,
                    step=self.settings.watch_step_ms,
                    stop_event=stop,
                    recursive=False,
                    force_polling=self.settings.force_polling or None,
                    poll_delay_ms=max(50, int(self.settings.rescan_interval_s * 100)),
                ):
                    self._wake.set()
            except (OSError, RuntimeError) as exc:  # directory replaced or watcher failure
                log.warning("file watcher failed, restarting", extra={"error": repr(exc)})
                await asyncio.sleep(1)

    # -- one pass over the directory ------------------------------------------------------

    def _pending(self) -> list[FileName]:
        names: list[FileName] = []
        with os.scandir(self.exports_dir) as entries:
            for entry in entries:
                parsed = parse_file_name(entry.name)
                if parsed is not None:
                    names.append(parsed)
                elif entry.name not in self._own_entries and entry.name not in self._ignored:
                    self._ignored.add(entry.name)
                    log.warning("ignoring a file that is not an export", extra={"file": entry.name})
        names.sort(key=lambda n: (n.stream, n.seq))
        return names

    async def scan_once(self, stop: asyncio.Event | None = None) -> ScanResult:
        result = ScanResult()
        for name in self._pending():
            if stop is not None and stop.is_set():
                break
            await self.process(name, result)
        return result

    async def process(self, name: FileName, result: ScanResult) -> None:
        self.heartbeat = time.monotonic()
        if name.stream in _STREAMED:
            await self._process_streamed(name, result)
            return
        try:
            export = await asyncio.to_thread(
                read_export, self.exports_dir, name, self.keyring, self.settings.max_file_bytes
            )
        except FileNotFoundError:
            return  # taken by another importer
        except RejectedFile as rejected:
            await self.quarantine(name.name, rejected)
            result.quarantined += 1
            return
        await self._apply(export, result)

    async def _apply(self, export: ExportFile, result: ScanResult) -> None:
        token = correlation_id.set(None)
        try:
            async with self.sessions() as session, session.begin():
                outcome = await apply_export(session, export)
        except _DB_ERRORS as exc:
            raise DatabaseUnavailable(repr(exc)) from exc
        finally:
            correlation_id.reset(token)
        observe_applied(export, outcome)
        if outcome.duplicate:
            result.duplicates += 1
            log.info("file already applied, archiving", extra={"file": export.name.name})
            self._archive(export.name.name, duplicate=True)
            return
        result.applied += 1
        result.changes += outcome.changes
        for record in export.records:
            log.info(
                "applied change",
                extra={
                    "file": export.name.name,
                    "event_id": str(record.event_id),
                    "entity": record.entity,
                    "entity_id": str(record.entity_id),
                    "version": record.version,
                    "correlation_id": record.correlation_id,
                },
            )
        self._archive(export.name.name, duplicate=False)

    async def _process_streamed(self, name: FileName, result: ScanResult) -> None:
        """Snapshots and results: applied while read, committed only once verified."""
        try:
            async with self.sessions() as session, session.begin():
                with open_export(
                    self.exports_dir, name, self.keyring, self.settings.max_snapshot_bytes
                ) as export:
                    outcome = await apply_streamed(session, export)
        except FileNotFoundError:
            return  # taken by another importer
        except RejectedFile as rejected:
            await self.quarantine(name.name, rejected)
            result.quarantined += 1
            return
        except _DB_ERRORS as exc:
            raise DatabaseUnavailable(repr(exc)) from exc
        if outcome.duplicate:
            result.duplicates += 1
            self._archive(name.name, duplicate=True)
            return
        result.applied += 1
        result.changes += outcome.written + outcome.removed
        log.info(
            "applied streamed file",
            extra={
                "file": name.name,
                "records": outcome.records,
                "written": outcome.written,
                "removed": outcome.removed,
                "stale": outcome.stale,
            },
        )
        self._archive(name.name, duplicate=False)

    # -- moving files out of the way ------------------------------------------------------

    def _archive(self, name: str, *, duplicate: bool) -> None:
        target = self.archive_dir / name
        if duplicate and target.exists():
            target = self.archive_dir / f"{name}.duplicate-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.exports_dir / name, target)

    def _move_to_quarantine(self, name: str, rejected: RejectedFile) -> tuple[str, int] | None:
        """Move the file (whatever it is: file, symlink, fifo, directory) and write its sidecar."""
        source = self.exports_dir / name
        target = self.quarantine_dir / name
        if os.path.lexists(target):
            target = self.quarantine_dir / f"{name}.{uuid.uuid4().hex[:8]}"
        try:
            size = os.lstat(source).st_size
            os.replace(source, target)
        except FileNotFoundError:
            return None
        sidecar = {
            "file": name,
            "stored_as": target.name,
            "reason": rejected.reason.value,
            "detail": rejected.detail,
            "size": size,
            "quarantined_at": datetime.now(UTC).isoformat(),
        }
        Path(f"{target}.reason.json").write_bytes(orjson.dumps(sidecar, option=orjson.OPT_INDENT_2))
        return target.name, size

    async def quarantine(self, name: str, rejected: RejectedFile) -> None:
        moved = await asyncio.to_thread(self._move_to_quarantine, name, rejected)
        if moved is None:
            return
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
        except _DB_ERRORS as exc:
            log.error("could not record quarantined file", extra={"file": name, "error": repr(exc)})


async def _wait_any(event: asyncio.Event, stop: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
