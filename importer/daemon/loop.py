"""The importer daemon: watch the exports directory, apply every genuine file exactly once.

File-system events are only a wake-up. Correctness comes from scanning the directory: at start-up
(files that arrived while the daemon was down), after every event batch, and every
``rescan_interval_s`` (events are lost on queue overflow and never arrive on NFS or Docker Desktop
mounts; ``force_polling`` covers those, ``watch_files=false`` leaves the rescan alone). A scan
applies files in sequence order per stream, many per transaction (``batch_max_files`` /
``batch_max_records``); if a batch fails because of one file's content, its files are applied
one per transaction so that the bad one is quarantined and cannot hold the others back.

How a file is read depends on its stream's kind alone (``exchange.format.kind_of_stream``), never on
what the file says: ``changes`` files are taken into memory and batched; snapshots (spooled to the
importer's own directory) and results are applied one per transaction. Either way a file is verified
(``importer.daemon.reading``) before anything is parsed, stored or decided about it, off the event
loop, and what becomes of it is decided in ``importer.daemon.handling``; applied files go to the
archive. A file that fails verification goes to quarantine with a sidecar ``.reason.json`` and a row
in ``quarantined_files`` (``importer.daemon.quarantine``); a name that is not an export name, or a
directory, is recorded once and left where it is (``importer.daemon.watch``). A database that is
unreachable never gets a file quarantined (``importer.daemon.failures``): the scan stops and is
retried with backoff. A stop request (SIGTERM) lets the current batch commit or roll back, then
exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time

from sqlalchemy import text
from watchfiles import Change, awatch

from exchange.format import (
    LATEST_DIRNAME,
    STAGING_DIRNAME,
    FileName,
    kind_of_stream,
    parse_file_name,
)
from exchange.sealing import Identities
from exchange.signing import Keyring
from importer.config import RequestSettings
from importer.daemon import ledger
from importer.daemon.failures import DB_ERRORS, DatabaseUnavailable, RetryLater
from importer.daemon.files import FileMover
from importer.daemon.handling import FileHandler, ScanResult
from importer.daemon.keys import TrustedKeys
from importer.daemon.quarantine import Quarantine
from importer.daemon.reading import FileReader, Read
from importer.daemon.watch import ForeignNames, GapWatch
from importer.db import RequestSessionMaker

log = logging.getLogger(__name__)


class Importer:
    def __init__(
        self,
        settings: RequestSettings,
        sessions: RequestSessionMaker,
        keyring: Keyring,
        identities: Identities | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.keys = TrustedKeys(
            settings.trusted_keys_path,
            settings.trusted_keys_list,
            keyring,
            identities_dir=settings.decryption_keys_path,
            identities=identities,
        )
        self.exports_dir = settings.exports_path
        self.archive_dir = settings.archive_path
        self.quarantine_dir = settings.quarantine_path
        self.files = FileMover(
            self.exports_dir,
            self.archive_dir,
            self.quarantine_dir,
            settings.spool_path,
            settings.quarantine_keep_bytes,
            settings.quarantine_max_bytes,
        )
        self.quarantined = Quarantine(sessions, self.files)
        self._wake = asyncio.Event()
        self.foreign = ForeignNames(sessions, self.exports_dir)
        # archive/ and quarantine/: where earlier versions kept them, inside the exports dir
        self._own_entries = {STAGING_DIRNAME, LATEST_DIRNAME, "archive", "quarantine"}
        #: ``time.monotonic()`` of the loop's last pass or file: its liveness
        #: (``importer.daemon.probes``)
        self.heartbeat = time.monotonic()
        self.gaps = GapWatch(sessions, settings.gap_alert_after_s)
        #: Files applied, duplicates, quarantined and changes since start: counters.
        self.totals = ScanResult()
        #: Passes over the directory completed since start.
        self.passes = 0
        self.reader = FileReader(settings, self.keys, self.files.spool_dir)
        self.handler = FileHandler(sessions, self.reader, self.files, self.quarantined, self._beat)

    @property
    def keyring(self) -> Keyring:
        return self.keys.keyring

    def prepare(self) -> None:
        self.files.prepare()

    def _beat(self) -> None:
        self.heartbeat = time.monotonic()

    def request_key_reload(self) -> None:
        """Re-read the trusted keys before the next scan (SIGHUP), and scan now."""
        self.keys.request_reload()
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.prepare()
        watcher = (
            asyncio.create_task(self._watch(stop), name="importer-watch")
            if self.settings.watch_files
            else None
        )
        backoff = 0.1
        next_prune = time.monotonic()
        pruning: asyncio.Task[int] | None = None
        log.info(
            "importer watching",
            extra={
                "dir": str(self.exports_dir),
                "events": self.settings.watch_files,
                "polling": self.settings.force_polling,
                "rescan_interval_s": self.settings.rescan_interval_s,
            },
        )
        try:
            while not stop.is_set():
                self._wake.clear()
                self.heartbeat = time.monotonic()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self.settings.prune_interval_s
                    await self.prune()
                    if pruning is None or pruning.done():
                        pruning = asyncio.create_task(self.prune_ledger(), name="ledger-prune")
                try:
                    await self.scan_once(stop)
                    backoff = 0.1
                    timeout = self.settings.rescan_interval_s
                except RetryLater as exc:
                    what = (
                        "request database" if isinstance(exc, DatabaseUnavailable) else "importer"
                    )
                    log.warning(f"{what} unavailable, retrying", extra={"error": str(exc)[:300]})
                    timeout = backoff
                    backoff = min(backoff * 2, 5.0)
                except Exception:  # whatever a file or a bug does, the daemon goes on
                    log.exception("scan failed, retrying")
                    timeout = backoff
                    backoff = min(backoff * 2, 5.0)
                await _wait_any(self._wake, stop, timeout)
        finally:
            for task in (watcher, pruning):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await asyncio.to_thread(self.reader.close)  # its unsealing child

    async def prune(self) -> dict[str, int]:
        """Delete archived and quarantined files past their retention (their rows stay), and
        the ledger rows exactly-once no longer needs."""
        now = time.time()
        try:
            removed = await asyncio.to_thread(
                self.files.prune,
                now - self.settings.archive_retention_days * 86_400,
                now - self.settings.quarantine_retention_days * 86_400,
            )
        except OSError as exc:
            log.error("could not prune the archive", extra={"error": repr(exc)})
            return {}
        try:  # the Request API's sign-in counters of windows that are over
            async with self.sessions() as session, session.begin():
                result = await session.execute(
                    text("DELETE FROM sign_in_throttle WHERE expires_at <= clock_timestamp()")
                )
                removed["sign_in_throttle"] = int(getattr(result, "rowcount", 0) or 0)
        except DB_ERRORS as exc:
            log.warning("could not prune sign-in counters", extra={"error": repr(exc)[:200]})
        if any(removed.values()):
            log.info("pruned old files", extra=removed)
        return removed

    async def prune_ledger(self) -> int:
        """Delete the import ledger rows exactly-once no longer needs (``importer.daemon.ledger``).
        The loop runs it beside the scans, not in their way: a first pass over a long ledger
        takes minutes (34,000 rows/s here), and files keep being applied meanwhile."""
        try:
            removed = await ledger.prune(
                self.sessions, keep=self.settings.ledger_keep_files, beat=self._beat
            )
        except DB_ERRORS as exc:
            log.warning("could not prune the import ledger", extra={"error": repr(exc)[:200]})
            return 0
        except Exception:  # the daemon goes on; the next pass tries again
            log.exception("pruning the import ledger failed")
            return 0
        if removed:
            log.info("pruned the import ledger", extra={"ledger_rows": removed})
        return removed

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
            except Exception as exc:  # the rescan carries on whatever happens here
                # e.g. the directory was replaced, or (watchfiles 1.x) an event for a name that
                # is not valid UTF-8 fails the whole watcher inside an ExceptionGroup
                log.warning("file watcher failed, restarting", extra={"error": repr(exc)[:300]})
                await asyncio.sleep(1)

    # -- one pass over the directory ------------------------------------------------------

    def _list(self) -> tuple[list[FileName], list[str]]:
        """Export names in apply order, and the names that are not ours (directories under an
        export name included: they are never read, and never removed)."""
        names: list[FileName] = []
        foreign: list[str] = []
        with os.scandir(self.exports_dir) as entries:
            for entry in entries:
                parsed = parse_file_name(entry.name)
                ours = parsed is not None and kind_of_stream(parsed.stream) is not None
                if parsed is not None and ours and not _is_dir(entry):
                    names.append(parsed)
                elif entry.name not in self._own_entries:
                    foreign.append(entry.name)
        names.sort(key=lambda n: (n.stream, n.seq))
        return names, foreign

    async def scan_once(self, stop: asyncio.Event | None = None) -> ScanResult:
        self.reader.stopping = stop
        result = ScanResult()
        try:
            await self._scan(result, stop)
            self.passes += 1
        finally:
            self.totals.add(result)
        return result

    async def _scan(self, result: ScanResult, stop: asyncio.Event | None) -> None:
        self.keys.refresh()
        names, foreign = await asyncio.to_thread(self._list)
        result.ignored = await self.foreign.record(foreign)
        await self.quarantined.reconcile()
        for stream, group in itertools.groupby(names, key=lambda n: n.stream):
            if kind_of_stream(stream) != "changes":
                for name in group:
                    if stop is not None and stop.is_set():
                        return
                    await self.handler.process_single(name, result)
            elif not await self._scan_stream(list(group), result, stop):
                return
        await self.gaps.check()

    async def process(self, name: FileName, result: ScanResult) -> None:
        """Apply one file, whatever its stream (``netsync import once`` goes file by file)."""
        if kind_of_stream(name.stream) != "changes":
            await self.handler.process_single(name, result)
        else:
            read = await asyncio.to_thread(self.reader.read_one, name)
            await self.handler.handle([(name, read)], result)

    async def _scan_stream(
        self, pending: list[FileName], result: ScanResult, stop: asyncio.Event | None
    ) -> bool:
        """Apply one stream's files batch by batch; the next batch is read and verified (in a
        thread) while the current one is applied. False when stopped part-way."""

        def read_from(start: int) -> asyncio.Task[tuple[list[Read], int]]:
            return asyncio.create_task(asyncio.to_thread(self.reader.read_chunk, pending, start))

        ahead: asyncio.Task[tuple[list[Read], int]] | None = read_from(0)
        try:
            while ahead is not None:
                reads, start = await ahead
                ahead = read_from(start) if start < len(pending) else None
                if stop is not None and stop.is_set():
                    return False  # nothing of this batch was written yet
                await self.handler.handle(reads, result, overlap=True)
        finally:
            try:
                if ahead is not None:  # stopped or failed: the read-ahead is dropped, unapplied
                    with contextlib.suppress(Exception):
                        await ahead
            finally:
                await self.handler.settle()
        return True


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


async def _wait_any(event: asyncio.Event, stop: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
