"""The importer's own files: the archive of applied files and the quarantine of refused ones.

Both live on the Request side, outside the exports directory by default
(``NETSYNC_IMPORTER_STATE_DIR``): whoever can write to the exports directory must not be able
to plant a link where the importer writes. Even so every write here is made as if they could:
relative to a directory descriptor, ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a name that exists, link
or not, is never opened, let alone overwritten), mode ``0640``; reads are bounded and never
follow links. There is no check-then-act: an existing name makes the write pick another one.

The archive keeps exactly the bytes that were verified and applied (written from the importer's
private copy, or the spooled copy linked in), not whatever the exports entry holds by then; a
duplicate is not kept twice. The quarantine keeps a ``.reason.json`` sidecar per refused file
and, of a genuine file refused for its content (a conflict, a malformed record), its whole
verified copy; of anything unverified only the first ``keep_bytes``, and only while the samples
stay under ``max_bytes`` in all, so a flood of forged files cannot fill the Request side's disk.
The exports entry is acted on only if it is still the very entry that was judged (same inode):
a genuine file published over a forged one under the same name is judged on its own. Plain
blocking calls: the daemon runs them in a thread. A file another importer took first is simply
gone: never an error.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from exchange.intake import RejectedFile, Taken

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".reason.json"
#: A sidecar is a few hundred bytes; one larger than this was not written by us.
MAX_SIDECAR_BYTES = 64 * 1024
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
FILE_MODE = 0o640
DIR_MODE = 0o750


def printable(name: str) -> str:
    """A directory entry name as text PostgreSQL accepts (names need not be valid UTF-8)."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text.replace("\x00", "\\0")[:255]


@contextlib.contextmanager
def _dir(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _create(dir_fd: int, name: str, *, fallback: str) -> tuple[int, str]:
    """Create ``name`` (or, if it exists in any form, ``<name>.<fallback>-<random>``)."""
    for candidate in (name, f"{name}.{fallback}-{uuid.uuid4().hex[:8]}"):
        try:
            return os.open(candidate, _CREATE, FILE_MODE, dir_fd=dir_fd), candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free name", name)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_bounded(path: Path, limit: int) -> bytes | None:
    """A regular file's bytes if it has no more than ``limit``; ``None`` for anything else."""
    try:
        fd = os.open(path, _READ)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        data = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= limit else None


@dataclass
class FileMover:
    exports_dir: Path
    archive_dir: Path
    quarantine_dir: Path
    spool_dir: Path
    #: Of a refused file that was not verified, keep at most this much ...
    keep_bytes: int = 64 * 1024
    #: ... while all such samples together stay under this.
    max_bytes: int = 1024 * 1024 * 1024
    _sampled: int | None = field(default=None, init=False, repr=False)

    def prepare(self) -> None:
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.archive_dir, self.quarantine_dir, self.spool_dir):
            path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        exports = self.exports_dir.resolve()
        for path in (self.archive_dir, self.quarantine_dir, self.spool_dir):
            if path.resolve().is_relative_to(exports):
                log.warning(
                    "an importer directory is inside the exports directory: whoever can write"
                    " there can plant entries in it (set NETSYNC_IMPORTER_STATE_DIR elsewhere)",
                    extra={"dir": str(path)},
                )

    # -- the archive ----------------------------------------------------------------------

    def archive(
        self,
        name: str,
        inode: tuple[int, int],
        *,
        data: bytes | None = None,
        taken: Taken | None = None,
        duplicate: bool,
    ) -> None:
        """Keep the verified bytes in the archive, then remove the exports entry."""
        try:
            with _dir(self.archive_dir) as dir_fd:
                self._archive_one(dir_fd, name, inode, data, taken, duplicate)
        except OSError as exc:
            log.error("could not open the archive", extra={"error": repr(exc)})

    def _archive_one(
        self,
        dir_fd: int,
        name: str,
        inode: tuple[int, int],
        data: bytes | None,
        taken: Taken | None,
        duplicate: bool,
    ) -> None:
        if duplicate:  # the archive (or another importer's) holds it already: no second copy
            self._remove(name, inode)
            return
        try:
            self._keep(dir_fd, name, data, taken, duplicate=duplicate)
        except OSError as exc:  # the file is applied; only its archive copy is missing
            log.error("could not archive a file", extra={"file": name, "error": repr(exc)})
        self._remove(name, inode)

    def _keep(
        self, dir_fd: int, name: str, data: bytes | None, taken: Taken | None, *, duplicate: bool
    ) -> str:
        """Write verified bytes under ``name`` (or a free variant of it); return the name."""
        fallback = "duplicate" if duplicate else "copy"
        spool = taken.spool_fd() if taken is not None else None
        if spool is not None:
            for candidate in (name, f"{name}.{fallback}-{uuid.uuid4().hex[:8]}"):
                try:  # give the verified, unnamed spool file a name: no copy at all
                    os.link(f"/proc/self/fd/{spool}", candidate, dst_dir_fd=dir_fd)
                    return candidate
                except FileExistsError:
                    continue
                except OSError:  # another file system, or no /proc: copy it instead
                    break
        fd, stored = _create(dir_fd, name, fallback=fallback)
        try:
            if data is not None:
                _write_all(fd, data)
            elif spool is not None:  # the whole file: body and trailer
                offset = 0
                while block := os.pread(spool, 1 << 20, offset):
                    _write_all(fd, block)
                    offset += len(block)
            elif taken is not None:
                body = taken.body()
                while block := body.read(1 << 20):
                    _write_all(fd, block)
                _write_all(fd, taken.trailer)
        finally:
            os.close(fd)
        return stored

    def archive_many(self, moves: list[tuple[str, tuple[int, int], bytes, bool]]) -> None:
        """``archive`` for a batch of files held in memory, with one directory descriptor."""
        try:
            with _dir(self.archive_dir) as dir_fd:
                for name, inode, data, duplicate in moves:
                    self._archive_one(dir_fd, name, inode, data, None, duplicate)
        except OSError as exc:
            log.error("could not open the archive", extra={"error": repr(exc)})

    def _remove(self, name: str, inode: tuple[int, int] | None) -> None:
        """Unlink the exports entry if it is (still) the one that was read; never a directory."""
        path = self.exports_dir / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode) or (inode is not None and (st.st_dev, st.st_ino) != inode):
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # swapped for a directory meanwhile, a sticky directory …
            log.warning("could not remove a file", extra={"file": name, "error": repr(exc)})

    def prune(self, archive_before: float, quarantine_before: float) -> dict[str, int]:
        """Delete archive and quarantine entries last modified before the given times (regular
        files only, never following links); return how many went from each."""
        removed: dict[str, int] = {"archive": 0, "quarantine": 0}
        for kind, directory, cutoff in (
            ("archive", self.archive_dir, archive_before),
            ("quarantine", self.quarantine_dir, quarantine_before),
        ):
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        st = entry.stat(follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(entry.path)
                            removed[kind] += 1
            except FileNotFoundError:
                continue
        self._sampled = None  # counted again when next needed
        return removed

    # -- the quarantine -------------------------------------------------------------------

    def move_to_quarantine(self, name: str, rejected: RejectedFile) -> tuple[str, int] | None:
        """Keep the evidence and a sidecar saying why, remove the entry, and return the name it
        is stored under and its size; ``None`` if the entry is gone, or is no longer the one that
        was judged (it is judged on its own at the next scan)."""
        source = self.exports_dir / name
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            return None
        now = (st.st_dev, st.st_ino)
        if (rejected.inode is not None and now != rejected.inode) or stat.S_ISDIR(st.st_mode):
            return None
        with _dir(self.quarantine_dir) as dir_fd:
            stored_as, kept = self._evidence(dir_fd, name, source, st, rejected)
            sidecar = {
                "file": name,
                "stored_as": stored_as,
                "reason": rejected.reason.value,
                "detail": rejected.detail,
                "size": st.st_size,
                "mode": stat.filemode(st.st_mode),
                "verified": rejected.evidence is not None,
                "kept_bytes": kept,
                "quarantined_at": datetime.now(UTC).isoformat(),
            }
            try:
                fd = os.open(stored_as + SIDECAR_SUFFIX, _CREATE, FILE_MODE, dir_fd=dir_fd)
                try:
                    _write_all(fd, orjson.dumps(sidecar, option=orjson.OPT_INDENT_2))
                finally:
                    os.close(fd)
            except OSError as exc:
                log.error("could not write a sidecar", extra={"file": name, "error": repr(exc)})
        self._remove(name, now)
        return stored_as, st.st_size

    def _evidence(
        self, dir_fd: int, name: str, source: Path, st: os.stat_result, rejected: RejectedFile
    ) -> tuple[str, int]:
        """Keep a verified file whole, an unverified one's first bytes (within the budget)."""
        evidence = rejected.evidence
        if isinstance(evidence, bytes):
            return self._keep(dir_fd, name, evidence, None, duplicate=False), len(evidence)
        if evidence is not None:
            return self._keep(dir_fd, name, None, evidence, duplicate=False), evidence.size
        budget = min(self.keep_bytes, max(0, self.max_bytes - self._sampled_bytes()))
        fd, stored_as = _create(dir_fd, name, fallback="refused")
        kept = 0
        try:
            if budget and stat.S_ISREG(st.st_mode):
                kept = self._sample(fd, source, (st.st_dev, st.st_ino), budget)
        finally:
            os.close(fd)
        self._sampled = self._sampled_bytes() + kept
        return stored_as, kept

    def _sample(self, fd: int, source: Path, inode: tuple[int, int], budget: int) -> int:
        """Copy up to ``budget`` bytes of the entry, if it is still that inode."""
        try:
            src = os.open(source, _READ)
        except OSError:
            return 0
        kept = 0
        try:
            seen = os.fstat(src)
            if not stat.S_ISREG(seen.st_mode) or (seen.st_dev, seen.st_ino) != inode:
                return 0
            while kept < budget and (block := os.read(src, min(budget - kept, 1 << 20))):
                _write_all(fd, block)
                kept += len(block)
        except OSError:
            pass
        finally:
            os.close(src)
        return kept

    def _sampled_bytes(self) -> int:
        """What the quarantine holds in all (counted once, then kept up to date)."""
        if self._sampled is None:
            total = 0
            try:
                with os.scandir(self.quarantine_dir) as entries:
                    for entry in entries:
                        with contextlib.suppress(OSError):
                            total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                pass
            self._sampled = total
        return self._sampled
