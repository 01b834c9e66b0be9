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
from pathlib import Path
from typing import TypeVar

from exchange.format import FileName, kind_of_stream
from exchange.intake import MEMORY_COPY_BYTES, SpoolError, Taken, take
from exchange.reader import (
    ExportFile,
    Opener,
    RejectedFile,
    RejectReason,
    parse_changes,
    unsealing_request,
)
from exchange.seal_streams import ChildLost, StreamFailed, UnsealingWorker
from importer.config import RequestSettings
from importer.daemon.failures import LocalFault
from importer.daemon.keys import TrustedKeys

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: A group of files read together (``FileReader.read_group``) ends once it holds this much:
#: what is read past a batch's end and dropped stays small.
GROUP_BYTES = 1 << 20

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

    def read_group(self, names: Sequence[FileName]) -> list[Read]:
        """Read consecutive files of a stream as one group: take and verify each, decrypt the
        sealed ones in one request to the unsealing child, then parse each. A group ends after
        ``GROUP_BYTES`` of files (one larger file is a group of its own)."""
        with contextlib.ExitStack() as held:
            taken: list[tuple[FileName, Taken | RejectedFile | None]] = []
            size = 0
            for name in names:
                if taken and self.stopping is not None and self.stopping.is_set():
                    break
                outcome = self.verified(name)
                if isinstance(outcome, Taken):
                    held.enter_context(outcome)
                    size += outcome.size
                taken.append((name, outcome))
                if size >= GROUP_BYTES:
                    break
            opener = self.opener()
            wanted = {
                index: request
                for index, (_, outcome) in enumerate(taken)
                if isinstance(outcome, Taken)
                and (request := unsealing_request(outcome, opener)) is not None
            }
            try:
                decrypted = self.worker.decrypt_many(list(wanted.values()))
                answers = dict(zip(wanted, decrypted, strict=True))
            except ChildLost as exc:  # killed, out of memory: no verdict on any of these files
                raise LocalFault(f"unsealing {len(wanted)} files: {exc}") from exc
            return [
                (name, self._parsed(outcome, answers.get(index)))
                if isinstance(outcome, Taken)
                else (name, outcome)
                for index, (name, outcome) in enumerate(taken)
            ]

    def read_chunk(self, names: Sequence[FileName], start: int) -> tuple[list[Read], int]:
        """Read files from ``start`` until a batch is full (files, records or bytes), a group
        at a time (``read_group``). Files of a group past the batch's end are dropped and read
        again with the next batch: they were only read, nothing was decided about them."""
        reads: list[Read] = []
        files = records = size = 0
        index = start
        # refused files count too: a flood of forged files is read a batch at a time as well
        while index < len(names) and files < self.settings.batch_max_files:
            if self.stopping is not None and self.stopping.is_set():
                break
            group = self.read_group(names[index : index + self.settings.batch_max_files - files])
            for name, outcome in group:
                if records >= self.settings.batch_max_records:
                    return reads, index
                if size >= self.settings.batch_max_bytes:
                    return reads, index
                reads.append((name, outcome))
                index += 1
                files += 1
                if isinstance(outcome, ExportFile):
                    records += len(outcome.records)
                    size += outcome.size
        return reads, index
