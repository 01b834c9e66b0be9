"""Reading export files for the daemon: take and verify, then unseal and parse, in worker threads.

Nothing is parsed before its signature holds (``exchange.intake``): a file is opened without
following links, size-checked by its stream's kind, hashed while it is copied where no writer of
the exports directory can reach it, and only then unsealed (``Opener``) and parsed. A key that
lands a moment after its file is looked for once more. ``read_chunk`` reads a batch of a
``changes`` stream, bounded by files, records and bytes, for the daemon to apply while it reads
the next (``importer.daemon.loop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from exchange.format import FileName, kind_of_stream
from exchange.intake import MEMORY_COPY_BYTES, SpoolError, Taken, take
from exchange.opening import Opener, unsealing_request
from exchange.reader import ExportFile, RejectedFile, RejectReason, parse_changes
from exchange.seal_streams import ChildLost, StreamFailed
from exchange.unsealing_worker import Batch, UnsealingWorker
from importer.config import RequestSettings
from importer.daemon.failures import LocalFault
from importer.daemon.keys import TrustedKeys

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: A group of files read together (``FileReader.read_chunk``) holds at most this many files,
#: and ends once it holds ``GROUP_BYTES``: what is read past a batch's end and dropped stays
#: small, and groups are small enough to overlap.
GROUP_FILES = 32
GROUP_BYTES = 1 << 20
#: Files up to this size (a one-change file is about 1.5 KiB) are read a group ahead; a larger
#: one amortises its per-file work itself.
SMALL_FILE_BYTES = 16 * 1024

#: A file of a ``changes`` stream as read: parsed, refused, or gone (another importer took it).
Read = tuple[FileName, ExportFile | RejectedFile | None]


class FileReader:
    """Takes, verifies, unseals and parses files of the exports directory (in worker threads)."""

    def __init__(self, settings: RequestSettings, keys: TrustedKeys, spool_dir: Path) -> None:
        self.settings = settings
        self.keys = keys
        self.spool_dir = spool_dir
        self.exports_dir = settings.exports_path
        #: The stop event of the running loop, looked at between the files of a batch.
        self.stopping: asyncio.Event | None = None
        #: Decrypts a batch's small bodies in a child process, off the GIL the applying thread
        #: needs (``read_chunk``).
        self.worker = UnsealingWorker()

    def verified(self, name: FileName) -> Taken | RejectedFile | None:
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
                    spool_dir=self.spool_dir,
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

    def opener(self) -> Opener:
        return Opener(self.keys.identities, self.settings.accepts_plaintext)

    def close(self) -> None:
        """Stop the unsealing child (a new one starts if this reader is used again)."""
        self.worker.close()

    def opened(self, parse: Callable[[Taken, Opener], _T], taken: Taken) -> _T:
        """Unseal and parse a verified file (in a worker thread). A body sealed to a key this
        importer lacks is tried once more if the keys changed: the new private key may have
        landed a moment after the file."""
        try:
            return parse(taken, self.opener())
        except RejectedFile as rejected:
            if rejected.reason is RejectReason.UNKNOWN_RECIPIENT and self.keys.refresh():
                return parse(taken, self.opener())
            raise

    def read_one(self, name: FileName) -> ExportFile | RejectedFile | None:
        """A ``changes`` file, verified and parsed (in a worker thread)."""
        taken = self.verified(name)
        if not isinstance(taken, Taken):
            return taken
        with taken:
            return self._parsed(taken, None)

    def _parsed(
        self, taken: Taken, unsealed: bytes | StreamFailed | None
    ) -> ExportFile | RejectedFile:
        try:
            if unsealed is None:
                return self.opened(parse_changes, taken)
            return parse_changes(taken, self.opener(), unsealed)
        except RejectedFile as rejected:
            if rejected.reason is RejectReason.UNKNOWN_RECIPIENT and unsealed is not None:
                return self._parsed(taken, None)  # the keys may have changed: once more here
            rejected.inode = taken.inode
            if taken.in_memory is not None:
                rejected.evidence = taken.in_memory + taken.trailer
            return rejected

    def _take_group(self, names: Sequence[FileName]) -> _Group:
        """Take and verify consecutive files of a stream: at most ``GROUP_FILES``, ending after
        ``GROUP_BYTES``, at a file larger than ``SMALL_FILE_BYTES`` or at one that is refused or
        gone (each is taken into the group). A local fault on any file but the first ends the
        group before it: it is raised when a batch reaches that file, not before."""
        group = _Group()
        try:
            size = 0
            for name in names[:GROUP_FILES]:
                if group.taken and self._stopping():
                    break
                try:
                    outcome = self.verified(name)
                except LocalFault:
                    if not group.taken:
                        raise
                    break
                group.taken.append((name, outcome))
                if not isinstance(outcome, Taken):  # refused or gone: the group ends here
                    break
                group.held.enter_context(outcome)
                size += outcome.size
                if outcome.size > SMALL_FILE_BYTES:
                    group.small = False
                    break
                if size >= GROUP_BYTES:
                    break
            opener = self.opener()
            for index, (_, outcome) in enumerate(group.taken):
                if isinstance(outcome, Taken):
                    request = unsealing_request(outcome, opener)
                    if request is not None:
                        group.sealed[index] = request
            if len(group.sealed) < 2:  # a lone file (the latency case) is cheaper to decrypt here
                group.sealed = {}
        except BaseException:
            group.held.close()
            raise
        return group

    def _send(self, group: _Group) -> None:
        """Hand the group's sealed bodies to the unsealing child (they are decrypted in this
        thread instead if it cannot take them)."""
        group.order = list(group.sealed)
        try:
            group.batch = self.worker.send(list(group.sealed.values()))
        except ChildLost as exc:
            log.warning("the unsealing process failed, decrypting here", extra={"error": str(exc)})
        group.sealed = {}  # the child has them: no second copy held while the group waits

    def _receive(self, group: _Group) -> list[bytes | StreamFailed] | None:
        if group.batch is None:
            return None
        batch, group.batch = group.batch, None
        try:
            return self.worker.receive(batch)
        except ChildLost as exc:  # killed, out of memory: no verdict on any file; done here
            log.warning("the unsealing process failed, decrypting here", extra={"error": str(exc)})
            return None

    def _parsed_group(
        self, group: _Group, answers: list[bytes | StreamFailed] | None
    ) -> list[Read]:
        unsealed = dict(zip(group.order, answers, strict=True)) if answers is not None else {}
        with group.held:
            return [
                (name, self._parsed(outcome, unsealed.get(index)))
                if isinstance(outcome, Taken)
                else (name, outcome)
                for index, (name, outcome) in enumerate(group.taken)
            ]

    def _stopping(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    def read_chunk(self, names: Sequence[FileName], start: int) -> tuple[list[Read], int]:
        """Read files from ``start`` until a batch is full (files, records or bytes).

        Files are read a group at a time (``_take_group``: opened, hashed, verified), the sealed
        bodies of a group decrypted in one request to the unsealing child. While a group's
        files are small, the next group is taken while the child decrypts the one before, and
        that one is parsed while the child decrypts the next. A group taken past the batch's
        end is dropped and read again with the next batch: it was only read, nothing was
        decided about it (at most ``GROUP_FILES`` small files, or one other).
        """
        reads: list[Read] = []
        records = size = 0
        index = start  # the first file not yet in reads
        pending: _Group | None = None  # taken, its sealed bodies with the child
        following: _Group | None = None  # the group after it, taken while the child works
        try:
            while True:
                ahead = index + (len(pending.taken) if pending is not None else 0)
                budget = self.settings.batch_max_files - (ahead - start)
                more = budget > 0 and ahead < len(names) and not self._stopping()
                if more and (pending is None or pending.small):
                    try:
                        following = self._take_group(names[ahead : ahead + budget])
                    except LocalFault:
                        if pending is None:  # the batch has reached the file: its fault now
                            raise
                        # taken ahead: raised again when the batch reaches it, if it does
                if pending is None and following is None:
                    break
                answers = self._receive(pending) if pending is not None else None
                if following is not None:
                    self._send(following)
                full = False
                if pending is not None:
                    for name, outcome in self._parsed_group(pending, answers):
                        if records >= self.settings.batch_max_records:
                            full = True
                        if size >= self.settings.batch_max_bytes:
                            full = True
                        if full:  # the rest, and the group taken ahead, are read again later
                            break
                        reads.append((name, outcome))
                        index += 1
                        if isinstance(outcome, ExportFile):
                            records += len(outcome.records)
                            size += outcome.size
                pending, following = following, None
                if full:
                    if pending is not None:  # taken ahead: its answers are taken and dropped
                        self._receive(pending)
                    break
        finally:
            for group in (pending, following):  # taken ahead and dropped, or failing
                if group is not None:
                    try:
                        if group.batch is not None:
                            self.worker.abandon(group.batch)
                    finally:
                        group.held.close()
        return reads, index


@dataclass
class _Group:
    """Consecutive files taken and verified together."""

    taken: list[tuple[FileName, Taken | RejectedFile | None]] = field(default_factory=list)
    #: What decrypting each sealed body takes, by its index in ``taken``, until it is sent.
    sealed: dict[int, tuple[bytes, list[Any]]] = field(default_factory=dict)
    #: The indices of the bodies sent, in the order their answers come.
    order: list[int] = field(default_factory=list)
    #: The request in flight with the unsealing child.
    batch: Batch | None = None
    #: The taken files' private copies, closed once they are parsed or dropped.
    held: contextlib.ExitStack[bool | None] = field(default_factory=contextlib.ExitStack)
    #: No file larger than ``SMALL_FILE_BYTES``: the next group may be taken ahead.
    small: bool = True
