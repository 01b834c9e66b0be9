"""The importer daemon: watch the exports directory, apply every genuine file exactly once.

File-system events are only a wake-up. Correctness comes from scanning the directory: at start-up
(files that arrived while the daemon was down), after every event batch, and every
``rescan_interval_s`` (events are lost on queue overflow and never arrive on NFS or Docker Desktop
mounts; ``force_polling`` covers those, ``watch_files=false`` leaves the rescan alone). A scan
applies files in sequence order per stream, many per transaction (``batch_max_files`` /
``batch_max_records``); if a batch fails because of one file's content, its files are applied
one per transaction so that the bad one is quarantined and cannot hold the others back.

How a file is read depends on its stream's kind alone (``exchange.format.kind_of_stream``), never
on what the file says: ``changes`` files are taken into memory and batched; snapshots (spooled to
the importer's own directory) and results are applied one per transaction. Either way a file is
verified (``exchange.intake``) before anything is parsed, stored or decided about it, off the
event loop; applied files go to the archive. A file that fails verification goes to quarantine
with a sidecar ``.reason.json`` and a row in ``quarantined_files`` (``importer.quarantine``); a
name that is not an export name, or a directory, is recorded once and left where it is
(``importer.watch``). A database that is unreachable never gets a file
quarantined (``importer.failures``): the scan stops and is retried with backoff. A stop request
(SIGTERM) lets the current batch commit or roll back, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import text
from watchfiles import Change, awatch

from exchange.format import (
    LATEST_DIRNAME,
    STAGING_DIRNAME,
    FileName,
    kind_of_stream,
    parse_file_name,
)
from exchange.intake import MEMORY_COPY_BYTES, SpoolError, Taken, take
from exchange.reader import (
    ExportFile,
    Opener,
    RejectedFile,
    RejectReason,
    VerifiedStream,
    parse_changes,
)
from exchange.sealing import Identities
from exchange.signing import Keyring
from importer import ledger
from importer.apply import ApplyResult, apply_changes
from importer.config import RequestSettings
from importer.db import RequestSessionMaker
from importer.failures import (
    DB_ERRORS,
    DatabaseUnavailable,
    LocalFault,
    RetryLater,
    blames_the_file,
)
from importer.files import FileMover
from importer.keys import TrustedKeys
from importer.probes import observe_applied, observe_generation, observe_superseded
from importer.quarantine import Quarantine
from importer.snapshots import apply_streamed
from importer.watch import ForeignNames, GapWatch
from netsync.logging import correlation_id

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_Read = tuple[FileName, ExportFile | RejectedFile | None]


@dataclass
class ScanResult:
    applied: int = 0
    duplicates: int = 0
    quarantined: int = 0
    changes: int = 0
    #: Files of an older generation than one already applied (``importer.ledger``).
    superseded: int = 0
    ignored: list[str] = field(default_factory=list)

    def add(self, other: ScanResult) -> None:
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.superseded += other.superseded
        self.quarantined += other.quarantined
        self.changes += other.changes


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
        #: ``time.monotonic()`` of the loop's last pass or file: its liveness (``importer.probes``)
        self.heartbeat = time.monotonic()
        self.gaps = GapWatch(sessions, settings.gap_alert_after_s)
        #: Files applied, duplicates, quarantined and changes since start: counters.
        self.totals = ScanResult()
        #: The stop event of the running loop, looked at by the read-ahead thread too.
        self._stopping: asyncio.Event | None = None

    @property
    def keyring(self) -> Keyring:
        return self.keys.keyring

    def prepare(self) -> None:
        self.files.prepare()

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
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

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
        try:
            removed["ledger_rows"] = await ledger.prune(
                self.sessions, keep=self.settings.ledger_keep_files
            )
        except DB_ERRORS as exc:
            log.warning("could not prune the import ledger", extra={"error": repr(exc)[:200]})
        if any(removed.values()):
            log.info("pruned old files", extra=removed)
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
        self._stopping = stop
        result = ScanResult()
        try:
            await self._scan(result, stop)
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
                    await self._process_single(name, result)
            elif not await self._scan_stream(list(group), result, stop):
                return
        await self.gaps.check()

    async def process(self, name: FileName, result: ScanResult) -> None:
        """Apply one file, whatever its stream (``netsync import once`` goes file by file)."""
        if kind_of_stream(name.stream) != "changes":
            await self._process_single(name, result)
        else:
            await self._handle([(name, await asyncio.to_thread(self._read_one, name))], result)

    async def _beat(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(1.0)

    async def _process_single(self, name: FileName, result: ScanResult) -> None:
        """Snapshots and results: verified first (spooled), then applied in one transaction."""
        beat = asyncio.create_task(self._beat())  # a long snapshot is work, not a hang
        try:
            taken = await asyncio.to_thread(self._verified, name)
            if isinstance(taken, RejectedFile):
                if await self.quarantined.put(name.name, taken):
                    result.quarantined += 1
                return
            if taken is None:
                return  # taken by another importer
            with taken:
                await self._apply_single(taken, result)
        finally:
            beat.cancel()

    async def _apply_single(self, taken: Taken, result: ScanResult) -> None:
        name = taken.name
        try:
            # unsealed whole before a transaction starts: nothing unauthenticated is applied
            export = await asyncio.to_thread(self._opened, VerifiedStream, taken)
            async with self.sessions() as session, session.begin():
                outcome = await apply_streamed(session, export)
        except RejectedFile as rejected:  # genuine, but malformed: nothing was committed
            await self._refuse_genuine(name, rejected, taken.inode, taken, result)
            return
        except SpoolError as exc:  # our own disk, not the file nor the database
            raise LocalFault(str(exc)) from exc
        except RetryLater:
            raise
        except Exception as exc:
            if not blames_the_file(exc):
                raise DatabaseUnavailable(repr(exc)) from exc
            await self._refuse_genuine(name, _apply_failed(exc), taken.inode, taken, result)
            return
        if outcome.began is not None:
            observe_generation(outcome.began, name)
        if outcome.conflict is not None:
            await self._conflict(name, outcome.conflict, taken.inode, taken, result)
            return
        if outcome.superseded:
            _superseded(name, result)
            await asyncio.to_thread(
                self.files.archive, name.name, taken.inode, taken=taken, duplicate=False
            )
            return
        if outcome.duplicate:
            result.duplicates += 1
            await asyncio.to_thread(
                self.files.archive, name.name, taken.inode, taken=taken, duplicate=True
            )
            return
        result.applied += 1
        result.changes += outcome.written + outcome.removed
        log.info(
            "applied streamed file",
            extra={"file": name.name, "written": outcome.written, "removed": outcome.removed},
        )
        await asyncio.to_thread(
            self.files.archive, name.name, taken.inode, taken=taken, duplicate=False
        )

    async def _conflict(
        self,
        name: FileName,
        detail: str,
        inode: tuple[int, int],
        evidence: bytes | Taken,
        result: ScanResult,
    ) -> None:
        log.error("ledger conflict", extra={"file": name.name, "detail": detail})
        rejected = RejectedFile(RejectReason.LEDGER_CONFLICT, detail)
        await self._refuse_genuine(name, rejected, inode, evidence, result)

    async def _refuse_genuine(
        self,
        name: FileName,
        rejected: RejectedFile,
        inode: tuple[int, int],
        evidence: bytes | Taken,
        result: ScanResult,
    ) -> None:
        """Quarantine a verified file: its whole private copy is kept, for the operator."""
        rejected.inode, rejected.evidence = inode, evidence
        if await self.quarantined.put(name.name, rejected):
            result.quarantined += 1

    async def _scan_stream(
        self, pending: list[FileName], result: ScanResult, stop: asyncio.Event | None
    ) -> bool:
        """Apply one stream's files batch by batch; the next batch is read and verified (in a
        thread) while the current one is applied. False when stopped part-way."""

        def read_from(start: int) -> asyncio.Task[tuple[list[_Read], int]]:
            return asyncio.create_task(asyncio.to_thread(self._read_chunk, pending, start))

        ahead: asyncio.Task[tuple[list[_Read], int]] | None = read_from(0)
        try:
            while ahead is not None:
                reads, start = await ahead
                ahead = read_from(start) if start < len(pending) else None
                if stop is not None and stop.is_set():
                    return False  # nothing of this batch was written yet
                await self._handle(reads, result)
        finally:
            if ahead is not None:  # stopped or failed: the read-ahead is dropped, unapplied
                with contextlib.suppress(Exception):
                    await ahead
        return True

    def _verified(self, name: FileName) -> Taken | RejectedFile | None:
        """Take and verify one file (in a worker thread); ``None`` if another importer took it."""
        kind = kind_of_stream(name.stream) or "changes"
        limit = self.settings.max_bytes_for(kind)
        for attempt in range(2):
            try:
                return take(
                    self.exports_dir,
                    name,
                    self.keys.keyring,
                    max_bytes=limit,
                    spool_dir=self.files.spool_dir,
                    # a changes file is parsed whole anyway; anything larger is spooled
                    memory_bytes=limit if kind == "changes" else MEMORY_COPY_BYTES,
                )
            except FileNotFoundError:
                return None
            except SpoolError as exc:
                raise LocalFault(str(exc)) from exc
            except OSError as exc:  # EIO, ESTALE, EMFILE …: not a verdict on the file
                raise LocalFault(f"reading {name.name}: {exc!r}") from exc
            except RejectedFile as rejected:
                # the new public key may have landed a moment after the file: look once more
                retry = rejected.reason is RejectReason.UNKNOWN_KEY and attempt == 0
                if retry and self.keys.refresh():
                    continue
                return rejected
            except Exception as exc:  # hostile input must never stop the daemon
                log.exception("unexpected error reading a file", extra={"file": name.name})
                return RejectedFile(RejectReason.UNREADABLE, repr(exc)[:200])
        raise AssertionError("unreachable")

    def _opener(self) -> Opener:
        return Opener(self.keys.identities, self.settings.accepts_plaintext)

    def _opened(self, parse: Callable[[Taken, Opener], _T], taken: Taken) -> _T:
        """Unseal and parse a verified file (in a worker thread). A body sealed to a key this
        importer lacks is tried once more if the keys changed: the new private key may have
        landed a moment after the file."""
        try:
            return parse(taken, self._opener())
        except RejectedFile as rejected:
            if rejected.reason is RejectReason.UNKNOWN_RECIPIENT and self.keys.refresh():
                return parse(taken, self._opener())
            raise

    def _read_one(self, name: FileName) -> ExportFile | RejectedFile | None:
        """A ``changes`` file, verified and parsed (in a worker thread)."""
        taken = self._verified(name)
        if not isinstance(taken, Taken):
            return taken
        with taken:
            try:
                return self._opened(parse_changes, taken)
            except RejectedFile as rejected:
                rejected.inode = taken.inode
                if taken.in_memory is not None:
                    rejected.evidence = taken.in_memory + taken.trailer
                return rejected

    def _read_chunk(self, names: Sequence[FileName], start: int) -> tuple[list[_Read], int]:
        """Read files from ``start`` until a batch is full (files, records or bytes)."""
        reads: list[_Read] = []
        files = records = size = 0
        index = start
        # refused files count too: a flood of forged files is read a batch at a time as well
        while index < len(names) and files < self.settings.batch_max_files:
            if records >= self.settings.batch_max_records or size >= self.settings.batch_max_bytes:
                break
            if self._stopping is not None and self._stopping.is_set():
                break
            outcome = self._read_one(names[index])
            reads.append((names[index], outcome))
            index += 1
            files += 1
            if isinstance(outcome, ExportFile):
                records += len(outcome.records)
                size += outcome.size
        return reads, index

    async def _handle(self, reads: list[_Read], result: ScanResult) -> None:
        batch: list[ExportFile] = []
        for name, outcome in reads:
            if isinstance(outcome, RejectedFile):
                if await self.quarantined.put(name.name, outcome):
                    result.quarantined += 1
            elif isinstance(outcome, ExportFile):
                batch.append(outcome)
        if batch:
            await self._apply_group(batch, result)

    async def _apply_group(self, exports: list[ExportFile], result: ScanResult) -> None:
        token = correlation_id.set(None)
        try:
            async with self.sessions() as session, session.begin():
                outcomes = await apply_changes(session, exports)
        except Exception as exc:
            if not blames_the_file(exc):
                raise DatabaseUnavailable(repr(exc)) from exc
            if len(exports) > 1:
                log.warning(
                    "batch failed, applying its files one per transaction",
                    extra={"files": len(exports), "error": repr(exc)[:300]},
                )
                for export in exports:
                    await self._apply_group([export], result)
                return
            log.error(
                "file could not be applied", extra={"file": exports[0].name.name}, exc_info=True
            )
            only = exports[0]
            await self._refuse_genuine(only.name, _apply_failed(exc), only.inode, only.data, result)
            return
        finally:
            correlation_id.reset(token)
        await self._applied(exports, outcomes, result)

    async def _applied(
        self, exports: list[ExportFile], outcomes: dict[int, ApplyResult], result: ScanResult
    ) -> None:
        moves: list[tuple[str, tuple[int, int], bytes, bool]] = []
        self.heartbeat = time.monotonic()
        if exports and (began := outcomes[exports[0].header.seq].began) is not None:
            observe_generation(began, max(e.name for e in exports if e.header.generation == began))
        for export in exports:
            outcome = outcomes[export.header.seq]
            if outcome.conflict is not None:
                await self._conflict(
                    export.name, outcome.conflict, export.inode, export.data, result
                )
                continue
            if outcome.superseded:
                _superseded(export.name, result)
                moves.append((export.name.name, export.inode, export.data, False))
                continue
            observe_applied(export, outcome)
            moves.append((export.name.name, export.inode, export.data, outcome.duplicate))
            if outcome.duplicate:
                result.duplicates += 1
                log.info("file already applied, archiving", extra={"file": export.name.name})
                continue
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
        await asyncio.to_thread(self.files.archive_many, moves)


def _superseded(name: FileName, result: ScanResult) -> None:
    result.superseded += 1
    observe_superseded(name)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _apply_failed(exc: Exception) -> RejectedFile:
    detail = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return RejectedFile(RejectReason.APPLY_FAILED, detail)


async def _wait_any(event: asyncio.Event, stop: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
