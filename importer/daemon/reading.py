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
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from exchange.format import FileName, kind_of_stream
from exchange.intake import MEMORY_COPY_BYTES, SpoolError, Taken, take
from exchange.reader import ExportFile, Opener, RejectedFile, RejectReason, parse_changes
from importer.config import RequestSettings
from importer.daemon.failures import LocalFault
from importer.daemon.keys import TrustedKeys

log = logging.getLogger(__name__)
_T = TypeVar("_T")

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
            try:
                return self.opened(parse_changes, taken)
            except RejectedFile as rejected:
                rejected.inode = taken.inode
                if taken.in_memory is not None:
                    rejected.evidence = taken.in_memory + taken.trailer
                return rejected

    def read_chunk(self, names: Sequence[FileName], start: int) -> tuple[list[Read], int]:
        """Read files from ``start`` until a batch is full (files, records or bytes)."""
        reads: list[Read] = []
        files = records = size = 0
        index = start
        # refused files count too: a flood of forged files is read a batch at a time as well
        while index < len(names) and files < self.settings.batch_max_files:
            if records >= self.settings.batch_max_records or size >= self.settings.batch_max_bytes:
                break
            if self.stopping is not None and self.stopping.is_set():
                break
            outcome = self.read_one(names[index])
            reads.append((names[index], outcome))
            index += 1
            files += 1
            if isinstance(outcome, ExportFile):
                records += len(outcome.records)
                size += outcome.size
        return reads, index
