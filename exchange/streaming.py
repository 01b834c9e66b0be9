"""Reading a large export file in one streaming pass: hashed while it is parsed.

``exchange.reader.read_export`` holds a whole file in memory and verifies it before parsing: right
for change files, impossible for a snapshot of a million rows (150+ MB). Here the file is read line
by line; every byte before the trailer goes through SHA-256 as it is handed out, and the trailer is
verified only at the end. Nothing read from the file may therefore take effect before
``finish()`` returns: the caller applies the records inside a transaction and commits only after
``finish()`` (a bad signature rolls everything back and quarantines the file).

Any refusal, whenever it is found, is reported as the signature's verdict first: a forged file is
``bad_signature`` or ``unknown_key`` even when its records are also malformed, exactly as the
in-memory reader would say, because the rest of the file is hashed before the refusal is raised.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn, Protocol

import orjson
from pydantic import ValidationError

from exchange.format import FORMAT_NAME, FORMAT_VERSION, ExportHeader, FileName
from exchange.reader import RejectedFile, RejectReason
from exchange.signing import SIGNATURE_ALG, Keyring

#: No record line may be longer than this: a bound on what one line costs in memory.
MAX_LINE_BYTES = 1 << 20
_READ_BUFFER = 1 << 20


class _Source(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Verified:
    sha256: str
    key_id: str
    size: int


class StreamedExport:
    """An export file being read; its header is parsed but not yet trusted."""

    def __init__(self, fh: _Source, name: FileName, keyring: Keyring, size: int) -> None:
        self.name = name
        self.size = size
        self._fh = fh
        self._keyring = keyring
        self._digest = hashlib.sha256()
        self._read = 0
        self._remaining_records = 0
        self._lines: list[bytes] = []
        self._next = 0
        self._tail = b""
        self.header = self._read_header()
        self._remaining_records = self.header.records

    # -- lines ------------------------------------------------------------------------------

    def _line(self) -> bytes:
        line = self._fh.readline(MAX_LINE_BYTES + 1)
        if not line:
            self.reject(RejectReason.TRUNCATED, "the file ends before its announced records")
        if not line.endswith(b"\n"):
            if len(line) > MAX_LINE_BYTES:
                self.reject(RejectReason.INVALID_SCHEMA, f"a line exceeds {MAX_LINE_BYTES} bytes")
            self.reject(RejectReason.TRUNCATED, "the file does not end with a complete line")
        self._digest.update(line)
        self._read += len(line)
        return line

    def _read_header(self) -> ExportHeader:
        line = self._line()
        try:
            raw = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self.reject(RejectReason.INVALID_JSON, f"header: {exc}")
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            self.reject(RejectReason.UNKNOWN_FORMAT, "the header does not name netsync-export")
        if raw.get("version") != FORMAT_VERSION:
            version = str(raw.get("version"))[:20]
            self.reject(RejectReason.UNSUPPORTED_VERSION, f"format version {version}")
        try:
            header = ExportHeader.model_validate(raw)
        except ValidationError as exc:
            self.reject(RejectReason.INVALID_SCHEMA, f"header: {exc.errors()[0]['msg']}")
        if (header.stream, header.seq) != (self.name.stream, self.name.seq):
            self.reject(
                RejectReason.NAME_MISMATCH,
                f"header says {header.stream}/{header.seq}, name {self.name.name}",
            )
        return header

    def _fill(self) -> bool:
        """Read one block into complete lines; False at the end of the file."""
        chunk = self._fh.read(_READ_BUFFER)
        if not chunk:
            return False
        parts = (self._tail + chunk).split(b"\n")
        self._tail = parts.pop()
        if len(self._tail) > MAX_LINE_BYTES:
            self.reject(RejectReason.INVALID_SCHEMA, f"a line exceeds {MAX_LINE_BYTES} bytes")
        if self._next:
            del self._lines[: self._next]
            self._next = 0
        self._lines.extend(parts)
        return True

    def record_lines(self, limit: int) -> list[bytes]:
        """The next ``limit`` (or fewer) record lines, without their newline; ``[]`` at the end.

        Lines are cut from large blocks and hashed a batch at a time: a million records cost
        a few hundred block reads, not a million ``readline`` calls.
        """
        want = min(limit, self._remaining_records)
        while len(self._lines) - self._next < want:
            if not self._fill():
                self.reject(RejectReason.TRUNCATED, "the file ends before its announced records")
        lines = self._lines[self._next : self._next + want]
        self._next += want
        self._remaining_records -= want
        if lines:
            data = b"\n".join(lines) + b"\n"
            self._digest.update(data)
            self._read += len(data)
        return lines

    @property
    def records_read(self) -> int:
        return self.header.records - self._remaining_records

    # -- the verdict ------------------------------------------------------------------------

    def finish(self) -> Verified:
        """Verify the trailer once every record was read; raise ``RejectedFile`` if unsound."""
        if self._remaining_records:
            raise RuntimeError("finish() before every record was read")
        while len(self._lines) - self._next < 1 and self._fill():
            pass
        if len(self._lines) - self._next < 1:
            raise RejectedFile(RejectReason.TRUNCATED, "the file does not end with a signature")
        trailer = self._lines[self._next] + b"\n"
        self._next += 1
        if len(self._lines) > self._next or self._tail or self._fh.read(1):
            self.reject(RejectReason.INVALID_SCHEMA, "more lines than the header announces")
        return self._verify(trailer)

    def reject(self, reason: RejectReason, detail: str) -> NoReturn:
        """Refuse the file; the signature's verdict, checked first, wins over ``reason``."""
        trailer = self._drain()
        if trailer is not None:
            self._verify(trailer)  # raises when the file is not genuine
        raise RejectedFile(reason, detail)

    def _drain(self) -> bytes | None:
        """Hash everything up to the last line without parsing it; return the last line."""
        rest = self._lines[self._next :]
        pending = b"".join(line + b"\n" for line in rest) + self._tail
        self._lines, self._next, self._tail = [], 0, b""
        while True:
            chunk = self._fh.read(_READ_BUFFER)
            data = pending + chunk
            cut = data.rfind(b"\n", 0, len(data) - 1)
            if cut >= 0:
                self._digest.update(data[: cut + 1])
                self._read += cut + 1
                pending = data[cut + 1 :]
            else:
                pending = data
            if not chunk:
                break
        return pending if pending.endswith(b"\n") else None

    def _verify(self, trailer_line: bytes) -> Verified:
        if not trailer_line.endswith(b"\n"):
            raise RejectedFile(RejectReason.TRUNCATED, "the file does not end with a signature")
        try:
            sig = orjson.loads(trailer_line)["signature"]
            alg, key_id, digest_hex = sig["alg"], sig["key_id"], sig["sha256"]
            value = base64.b64decode(sig["value"], validate=True)
        except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error, ValueError) as exc:
            raise RejectedFile(RejectReason.UNSIGNED, "the last line is not a signature") from exc
        if alg != SIGNATURE_ALG or not isinstance(key_id, str) or not isinstance(digest_hex, str):
            raise RejectedFile(RejectReason.UNSIGNED, f"unsupported signature {alg!r}")
        if key_id not in self._keyring:
            raise RejectedFile(RejectReason.UNKNOWN_KEY, f"key id {key_id[:32]!r} is not trusted")
        digest = self._digest.digest()
        if digest.hex() != digest_hex:
            raise RejectedFile(
                RejectReason.BAD_SIGNATURE, "content does not match the signed digest"
            )
        if not self._keyring.verify(key_id, digest, value):
            raise RejectedFile(
                RejectReason.BAD_SIGNATURE, f"signature does not verify with {key_id}"
            )
        return Verified(digest.hex(), key_id, self._read + len(trailer_line))


def _open_regular(path: Path, max_bytes: int) -> tuple[int, int]:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise RejectedFile(RejectReason.SYMLINK, "symbolic links are never followed")
    if not stat.S_ISREG(st.st_mode):
        raise RejectedFile(RejectReason.NOT_REGULAR, f"file mode {stat.filemode(st.st_mode)}")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: replaced by a symlink between lstat and open
            raise RejectedFile(RejectReason.SYMLINK, "symbolic links are never followed") from exc
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
        os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RejectedFile(RejectReason.NOT_REGULAR, f"file mode {stat.filemode(st.st_mode)}")
        raise RejectedFile(RejectReason.TOO_LARGE, f"{st.st_size} bytes > limit {max_bytes}")
    return fd, st.st_size


class _Bounded:
    """A read-only view of a file that refuses to hand out more than ``limit`` bytes.

    The size was checked at open; a file that grows while it is read is refused too.
    """

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self._fh = fh
        self._left = limit

    def _take(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            raise RejectedFile(RejectReason.TOO_LARGE, "the file grew past the limit")
        return data

    def readline(self, size: int = -1, /) -> bytes:
        return self._take(self._fh.readline(size))

    def read(self, size: int = -1, /) -> bytes:
        return self._take(self._fh.read(size))


@contextlib.contextmanager
def open_export(
    directory: Path, name: FileName, keyring: Keyring, max_bytes: int
) -> Iterator[StreamedExport]:
    """Open ``directory/name`` for a streaming read; ``RejectedFile`` for anything unsound.

    ``FileNotFoundError`` propagates unchanged: the file was taken by another importer.
    """
    fd, size = _open_regular(directory / name.name, max_bytes)
    with os.fdopen(fd, "rb", buffering=_READ_BUFFER) as fh:
        bounded = _Bounded(fh, max_bytes)
        yield StreamedExport(bounded, name, keyring, size)
