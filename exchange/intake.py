"""Taking a file out of the exports directory: bounded, never through a link, verified first.

The exports directory is the trust boundary: whoever can write there may be hostile, and may keep
writing to a file after the importer has opened it. So a file is read from one descriptor opened
without following links, in bounded blocks, and what is parsed later is a private copy the
writer cannot reach, whose every byte was covered by the verified signature:

* a small file (up to ``MEMORY_COPY_BYTES``) is hashed and copied into memory in one pass;
* a large one is hashed in a first pass that keeps nothing; only if the signature holds is it
  read again, hashed again and copied into an unnamed file in the importer's own spool
  directory, and the copy is used only if the second digest equals the verified one (a file
  rewritten in between is refused). A forged gigabyte costs one hashing pass: no disk writes,
  no memory beyond one block.

Nothing is parsed, stored or decided (duplicate, applied, archived) before the signature holds.

This is the one place that checks a trailer; ``exchange.reader`` parses what it hands out.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import io
import os
import stat
import tempfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, Protocol

import orjson

from exchange.format import FileName
from exchange.signing import SIGNATURE_ALG, Keyring

#: The trailer is one short JSON line (~230 bytes); a last line longer than this is not one.
MAX_TRAILER_BYTES = 4096
#: Bytes per read: the memory one read costs, whatever the file's size.
BLOCK_BYTES = 1 << 20
#: Files up to this size are copied into memory, larger ones into the spool directory.
MEMORY_COPY_BYTES = 8 << 20


class RejectReason(StrEnum):
    SYMLINK = "symlink"
    NOT_REGULAR = "not_regular_file"
    TOO_LARGE = "too_large"
    TRUNCATED = "truncated"
    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    INVALID_JSON = "invalid_json"
    UNKNOWN_FORMAT = "unknown_format"
    UNSUPPORTED_VERSION = "unsupported_version"
    INVALID_SCHEMA = "invalid_schema"
    NAME_MISMATCH = "name_mismatch"
    #: The file exists but cannot be opened or read (permissions, I/O error).
    UNREADABLE = "unreadable"
    #: Verified and parsed, but the database refused its content (the importer's verdict).
    APPLY_FAILED = "apply_failed"
    #: Genuine, but its stream and sequence number are already held by another file id (or its
    #: file id by another place): two different files claim one place (``docs/operations.md``).
    LEDGER_CONFLICT = "ledger_conflict"
    #: Not an export file name at all: recorded once, left where it is, never read.
    NOT_AN_EXPORT_NAME = "not_an_export_name"
    #: Genuine, but sealed to keys this importer does not hold (the detail names them).
    UNKNOWN_RECIPIENT = "unknown_recipient"
    #: Genuine, but its ciphertext ends before its last chunk.
    SEALED_TRUNCATED = "sealed_truncated"
    #: Genuine, but a chunk or the age header does not authenticate.
    SEALED_CORRUPT = "sealed_corrupt"
    #: A version 1 (unsealed) file where plaintext is not accepted (``NETSYNC_ACCEPT_PLAINTEXT``).
    PLAINTEXT_REFUSED = "plaintext_refused"


class RejectedFile(Exception):
    """A file that must not be applied, and why.

    ``inode`` is the ``(st_dev, st_ino)`` of the directory entry that was judged, where it is
    known: the quarantine acts on that entry only, never on another file that took its name
    since (a genuine file published over a forged one must not pay for it).
    """

    def __init__(
        self, reason: RejectReason, detail: str, *, inode: tuple[int, int] | None = None
    ) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.inode = inode
        #: For a file that was verified (genuine, refused for its content): the private copy
        #: of its exact bytes, which the quarantine keeps whole. Never set for a forged file.
        self.evidence: bytes | Taken | None = None


class Closeable(Protocol):
    def close(self) -> None: ...


class SpoolError(Exception):
    """The importer's own spool directory failed (missing, full, read-only): no verdict on the
    file, which stays where it is until the spool works again."""


#: Read errors that say something about the file itself; any other error while reading the
#: exports entry (EIO, ESTALE on NFS, EMFILE …) is transient or ours, and is retried.
_THE_FILES_FAULT = frozenset({errno.EACCES, errno.EPERM, errno.ENXIO, errno.ELOOP})


@dataclass
class Taken:
    """A verified file: its digest, its signer and the private copy of its signed body."""

    name: FileName
    sha256: str
    key_id: str
    size: int
    #: The signature trailer, exactly as it was on disk.
    trailer: bytes
    #: ``(st_dev, st_ino)`` of the directory entry that was read.
    inode: tuple[int, int]
    _memory: bytes | None = None
    _spool: BinaryIO | None = None
    #: What lives as long as this copy: the unsealing child of a large body
    #: (``exchange.opening.open_body``).
    _companions: list[Closeable] = field(default_factory=list)

    @property
    def in_memory(self) -> bytes | None:
        """The signed body when it was copied into memory (small files)."""
        return self._memory

    def body(self) -> BinaryIO:
        """The signed body from its first byte (the private copy; never the exports entry). A
        spooled copy goes on with the trailer: read ``size - len(trailer)`` bytes of it."""
        if self._memory is not None:
            return io.BytesIO(self._memory)
        assert self._spool is not None
        self._spool.seek(0)
        return self._spool

    def spool_fd(self) -> int | None:
        """The descriptor of the spooled copy (the whole file as it arrived, trailer included),
        to link it into the archive or the quarantine; ``None`` if the file was not spooled."""
        return self._spool.fileno() if self._spool is not None else None

    def keep_open(self, companion: Closeable) -> None:
        """Close ``companion`` with this file."""
        self._companions.append(companion)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        for companion in self._companions:
            companion.close()
        self._companions.clear()
        self._memory = None

    def __enter__(self) -> Taken:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _unreadable(exc: OSError, inode: tuple[int, int] | None = None) -> Exception:
    """A refusal for what is the file's fault; otherwise the error itself, to be retried."""
    if exc.errno in _THE_FILES_FAULT:
        return RejectedFile(RejectReason.UNREADABLE, exc.strerror or repr(exc), inode=inode)
    return exc


def open_entry(path: Path, max_bytes: int) -> tuple[int, os.stat_result]:
    """Open a directory entry for reading only if it is a regular file within ``max_bytes``.

    Symbolic links are never followed (``O_NOFOLLOW``), a FIFO or device is refused from its
    ``lstat`` without being opened, and ``O_NONBLOCK`` keeps one swapped in after that from
    blocking. ``FileNotFoundError`` propagates: the file was taken by another importer.
    """
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _unreadable(exc) from exc
    _check_entry(before, max_bytes, (before.st_dev, before.st_ino))
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a link between lstat and open
            raise RejectedFile(RejectReason.SYMLINK, "symbolic links are never followed") from exc
        raise _unreadable(exc, (before.st_dev, before.st_ino)) from exc
    try:
        st = os.fstat(fd)
        _check_entry(st, max_bytes, (st.st_dev, st.st_ino))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _check_entry(st: os.stat_result, max_bytes: int, inode: tuple[int, int]) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise RejectedFile(RejectReason.SYMLINK, "symbolic links are never followed", inode=inode)
    if not stat.S_ISREG(st.st_mode):
        mode = stat.filemode(st.st_mode)
        raise RejectedFile(RejectReason.NOT_REGULAR, f"file mode {mode}", inode=inode)
    if st.st_size > max_bytes:
        detail = f"{st.st_size} bytes > limit {max_bytes}"
        raise RejectedFile(RejectReason.TOO_LARGE, detail, inode=inode)


def spool_file(directory: Path) -> int:
    """An unnamed file in ``directory`` (``O_TMPFILE``): it dies with its descriptor, and can
    still be given a name (linked into the archive) once its content is known to be genuine.
    Where the file system lacks ``O_TMPFILE``, a named temporary file is unlinked at once."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    fd, path = tempfile.mkstemp(dir=directory, prefix=".spool-")
    os.unlink(path)
    return fd


class _Copy:
    """Where the body goes while it is hashed: a bytearray, or an unnamed spool file."""

    def __init__(self, size: int, spool_dir: Path | None, memory_bytes: int) -> None:
        self.memory: bytearray | None = None
        self.spool: BinaryIO | None = None
        if size <= memory_bytes or spool_dir is None:
            self.memory = bytearray()
            return
        try:
            self.spool = os.fdopen(spool_file(spool_dir), "w+b", buffering=0)
        except OSError as exc:
            raise SpoolError(f"cannot create a spool file in {spool_dir}: {exc}") from exc

    def write(self, data: bytes) -> None:
        if self.memory is not None:
            self.memory += data
            return
        assert self.spool is not None
        view = memoryview(data)
        try:
            while view:  # a raw file may write less than it was given
                written = self.spool.write(view)
                view = view[written or 0 :]
        except OSError as exc:
            raise SpoolError(f"cannot write the spool: {exc}") from exc

    def discard(self) -> None:
        if self.spool is not None:
            self.spool.close()
        self.memory = None


def take(
    directory: Path,
    name: FileName,
    keyring: Keyring,
    *,
    max_bytes: int,
    spool_dir: Path | None = None,
    memory_bytes: int = MEMORY_COPY_BYTES,
) -> Taken:
    """Read and verify ``directory/name``; ``RejectedFile`` for anything that is not genuine.

    Files over ``memory_bytes`` are copied into ``spool_dir`` (memory when it is ``None``:
    callers that read large files must give one). The caller closes the result. An error of the
    spool is a ``SpoolError``, and a transient read error (EIO, ESTALE …) propagates as the
    ``OSError`` it is: neither is a verdict on the file.
    """
    fd, st = open_entry(directory / name.name, max_bytes)
    inode = (st.st_dev, st.st_ino)
    copy: _Copy | None = None
    try:
        copy = _Copy(st.st_size, spool_dir, memory_bytes)
        if copy.memory is not None:
            digest, trailer, total = _hash_and_copy(fd, copy, st.st_size)
            key_id = _verify(trailer, digest, keyring)
        else:
            digest, trailer, total = _hash_and_copy(fd, None, st.st_size)
            key_id = _verify(trailer, digest, keyring)
            os.lseek(fd, 0, os.SEEK_SET)
            again = _hash_and_copy(fd, copy, st.st_size)
            if again != (digest, trailer, total):
                raise RejectedFile(RejectReason.BAD_SIGNATURE, "the file changed while it was read")
            copy.write(trailer)  # the spool is the whole file: the archive links it as it is
    except RejectedFile as rejected:
        if copy is not None:
            copy.discard()
        rejected.inode = rejected.inode or inode
        raise
    except BaseException:
        if copy is not None:
            copy.discard()
        raise
    finally:
        os.close(fd)
    memory = bytes(copy.memory) if copy.memory is not None else None
    return Taken(
        name, digest.hex(), key_id, total, trailer, inode, _memory=memory, _spool=copy.spool
    )


def _hash_and_copy(fd: int, copy: _Copy | None, size: int) -> tuple[bytes, bytes, int]:
    """One pass: hash and copy every byte before the last line; return digest, trailer, size.

    A published file never changes, so reading more than ``fstat`` said it held is a refusal
    at once: a file that grows while it is read costs nothing (not a byte-by-byte crawl, not
    memory). Reads ask for what is left plus one byte, so a small file costs a small buffer.
    """
    sha = hashlib.sha256()
    pending = b""  # the last line so far: the trailer, if nothing follows
    total = 0
    ends_with_newline = False
    while True:
        try:
            chunk = os.read(fd, min(BLOCK_BYTES, size - total + 1))
        except OSError as exc:
            raise _unreadable(exc) from exc
        if not chunk:
            break
        total += len(chunk)
        if total > size:
            raise RejectedFile(RejectReason.TOO_LARGE, "the file grew while it was read")
        ends_with_newline = chunk.endswith(b"\n")
        data = pending + chunk
        cut = data.rfind(b"\n", 0, len(data) - 1)
        if cut >= 0:
            body, pending = data[: cut + 1], data[cut + 1 :]
        else:
            body, pending = b"", data
        if len(pending) > MAX_TRAILER_BYTES:  # too long to be the trailer: it is body
            body, pending = data, b""
        if body:
            sha.update(body)
            if copy is not None:
                copy.write(body)
    if total == 0:
        raise RejectedFile(RejectReason.TRUNCATED, "the file is empty")
    if total < size:
        raise RejectedFile(RejectReason.TRUNCATED, "the file shrank while it was read")
    if not ends_with_newline:
        raise RejectedFile(RejectReason.TRUNCATED, "the file does not end with a complete line")
    if not pending:
        raise RejectedFile(RejectReason.UNSIGNED, "the last line is too long to be a signature")
    if total == len(pending):
        raise RejectedFile(RejectReason.TRUNCATED, "no header before the last line")
    return sha.digest(), pending, total


def _verify(trailer: bytes, digest: bytes, keyring: Keyring) -> str:
    """Check the trailer's signature over ``digest``; return the signer's key id."""
    try:
        sig = orjson.loads(trailer)["signature"]
        alg, key_id, digest_hex = sig["alg"], sig["key_id"], sig["sha256"]
        value = base64.b64decode(sig["value"], validate=True)
    except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error, ValueError) as exc:
        raise RejectedFile(RejectReason.UNSIGNED, "the last line is not a signature") from exc
    if alg != SIGNATURE_ALG or not isinstance(key_id, str) or not isinstance(digest_hex, str):
        raise RejectedFile(RejectReason.UNSIGNED, f"unsupported signature {str(alg)[:40]!r}")
    if key_id not in keyring:
        raise RejectedFile(RejectReason.UNKNOWN_KEY, f"key id {key_id[:32]!r} is not trusted")
    if digest.hex() != digest_hex:
        raise RejectedFile(RejectReason.BAD_SIGNATURE, "content does not match the signed digest")
    if not keyring.verify(key_id, digest, value):
        raise RejectedFile(RejectReason.BAD_SIGNATURE, f"signature does not verify with {key_id}")
    return key_id
