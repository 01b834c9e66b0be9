"""What becomes of a verified file: applied and archived, a duplicate, superseded, or refused.

``changes`` files arrive here as batches (``handle``: one transaction for many files, split one per
transaction when a file's content fails it, so that the bad one is quarantined and cannot hold the
others back); snapshots and results one at a time (``process_single``: verified into the spool,
applied in one transaction). A database that does not answer is never the file's fault
(``importer.daemon.failures``): it raises for the daemon to retry the scan, and no file is
quarantined for it. Each outcome is counted in a ``ScanResult``, logged and measured
(``importer.daemon.probes``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from exchange.format import FileName
from exchange.intake import SpoolError, Taken
from exchange.reader import ExportFile, RejectedFile, RejectReason, VerifiedStream
from importer.daemon.apply import ApplyResult, apply_changes
from importer.daemon.failures import DatabaseUnavailable, LocalFault, RetryLater, blames_the_file
from importer.daemon.files import FileMover
from importer.daemon.probes import observe_applied, observe_generation, observe_superseded
from importer.daemon.quarantine import Quarantine
from importer.daemon.reading import FileReader, Read
from importer.daemon.snapshots import apply_streamed
from importer.db import RequestSessionMaker
from netsync.logging import correlation_id

log = logging.getLogger(__name__)


@dataclass
class ScanResult:
    applied: int = 0
    duplicates: int = 0
    quarantined: int = 0
    changes: int = 0
    #: Files of an older generation than one already applied (``importer.daemon.ledger``).
    superseded: int = 0
    ignored: list[str] = field(default_factory=list)

    def add(self, other: ScanResult) -> None:
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.superseded += other.superseded
        self.quarantined += other.quarantined
        self.changes += other.changes


class FileHandler:
    """Applies what the reader verified, in transactions, and files each outcome away."""

    def __init__(
        self,
        sessions: RequestSessionMaker,
        reader: FileReader,
        files: FileMover,
        quarantined: Quarantine,
        beat: Callable[[], None],
    ) -> None:
        self.sessions = sessions
        self.reader = reader
        self.files = files
        self.quarantined = quarantined
        #: Moves the daemon's liveness heartbeat: long work is work, not a hang.
        self.beat = beat
        #: The applied batch whose files are being archived while the next one is applied.
        self._archiving: asyncio.Future[None] | None = None

    async def settle(self) -> None:
        """Wait until every applied file is archived (the end of a scan; the next batch's
        archiving waits for the previous one, so they stay in order). Shielded: a thread
        cannot be stopped, so a cancelled caller leaves it tracked, and the next settle waits."""
        if self._archiving is not None:
            await asyncio.shield(self._archiving)
            self._archiving = None

    def _archive(self, moves: list[tuple[str, tuple[int, int], bytes, bool]]) -> None:
        """The archive thread's work: whatever goes wrong is logged, never raised into the next
        batch (whose files would then go unarchived). The files are applied either way."""
        try:
            self.files.archive_many(moves)
        except Exception:
            log.exception("archiving applied files failed", extra={"files": len(moves)})

    async def _beat(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(1.0)

    async def process_single(self, name: FileName, result: ScanResult) -> None:
        """Snapshots and results: verified first (spooled), then applied in one transaction."""
        beat = asyncio.create_task(self._beat())  # a long snapshot is work, not a hang
        try:
            taken = await asyncio.to_thread(self.reader.verified, name)
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
            export = await asyncio.to_thread(self.reader.opened, VerifiedStream, taken)
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

    async def handle(self, reads: list[Read], result: ScanResult, *, overlap: bool = False) -> None:
        """Apply a batch of reads. ``overlap``: its files are archived while the caller goes on
        (applying the next batch); ``settle`` waits for them. Safe, because the ledger has
        committed: a file whose archiving is cut short is still in the exports directory, and
        the next scan finds it applied and removes it (without an archive copy, as after any
        crash between the commit and the archive)."""
        batch: list[ExportFile] = []
        for name, outcome in reads:
            if isinstance(outcome, RejectedFile):
                if await self.quarantined.put(name.name, outcome):
                    result.quarantined += 1
            elif isinstance(outcome, ExportFile):
                batch.append(outcome)
        try:
            if batch:
                await self._apply_group(batch, result)
        finally:
            if not overlap:
                await self.settle()

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
        self.beat()
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
            if not log.isEnabledFor(logging.INFO):
                continue  # a line per change: not even built when nobody reads it
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
        await self.settle()
        self._archiving = asyncio.ensure_future(asyncio.to_thread(self._archive, moves))


def _superseded(name: FileName, result: ScanResult) -> None:
    result.superseded += 1
    observe_superseded(name)


def _apply_failed(exc: Exception) -> RejectedFile:
    detail = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return RejectedFile(RejectReason.APPLY_FAILED, detail)
