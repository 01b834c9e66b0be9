"""Opening and parsing export files that ``exchange.intake`` has verified: header and records.

Nothing here reads the exports directory or sees a byte whose signature was not checked: the
input is a ``Taken``, the private copy of a verified body. Verify, then unseal, then parse:
``open_body`` reads the clear envelope, checks that this importer holds a key the body is sealed
to, and decrypts the whole body (into memory, or the importer's spool for a large file) before a
record is parsed, so a body whose last chunk is missing is refused before anything is applied.
Two shapes then share one header check:

* ``read_export``: a small file (``changes``) parsed whole into typed records, for batching;
* ``VerifiedStream``: a large or single file (snapshots, results) handed out a block of record
  lines at a time, so a million-row snapshot costs a few MB of memory.

A genuine file can still be malformed (a bug on the writing side): every refusal is a
``RejectedFile`` with a stable reason the importer quarantines by.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from pydantic import ValidationError

from exchange.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PLAINTEXT_VERSION,
    ChangeRecord,
    Envelope,
    ExportHeader,
    FileName,
    kind_of_stream,
    parse_file_name,
)
from exchange.intake import (
    MAX_TRAILER_BYTES,
    RejectedFile,
    RejectReason,
    SpoolError,
    Taken,
    take,
)
from exchange.seal_streams import ChildLost, StreamFailed, UnsealingStream
from exchange.sealing import Identities, SealError, decrypt_error
from exchange.signing import Keyring
from exchange.window import Window

__all__ = [
    "MAX_LINE_BYTES",
    "ExportFile",
    "Opener",
    "RejectReason",
    "RejectedFile",
    "VerifiedStream",
    "parse_header",
    "read_export",
    "unsealing_request",
]

#: No line of a streamed file may be longer than this: a bound on what one line costs.
MAX_LINE_BYTES = 1 << 20
_READ_BUFFER = 1 << 20


@dataclass(frozen=True)
class Opener:
    """What opening a verified body takes: the importer's private keys, and whether it accepts
    version 1 (unsealed) files."""

    identities: Identities = field(default_factory=Identities)
    accept_plaintext: bool = False


@dataclass
class Plain:
    """The clear body of a verified file: its header line first, then its record lines (in
    memory, or the first ``length`` bytes of a file)."""

    version: int
    memory: bytes | None = None
    file: BinaryIO | None = None
    length: int = 0
    #: A large sealed body, decrypted while it is read (read once, from its first byte).
    stream: UnsealingStream | None = None

    def reader(self) -> BinaryIO | Window | _Opening:
        if self.memory is not None:
            return io.BytesIO(self.memory)
        if self.stream is not None:
            return _Opening(self.stream)
        assert self.file is not None
        self.file.seek(0)
        return Window(self.file, self.length)


def _refusal(exc: SealError) -> RejectedFile:
    return RejectedFile(RejectReason(exc.reason.value), exc.detail)


def _schema_error(what: str, exc: ValidationError) -> RejectedFile:
    """A refusal naming the first thing pydantic found wrong (never the input itself)."""
    return RejectedFile(RejectReason.INVALID_SCHEMA, f"{what}: {exc.errors()[0]['msg']}")


class _Opening:
    """An ``UnsealingStream`` whose failure (at its end) is a refusal of the file."""

    def __init__(self, stream: UnsealingStream) -> None:
        self._stream = stream

    def read(self, size: int | None = -1) -> bytes:
        return self._guarded(self._stream.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._guarded(self._stream.readline, size)

    @staticmethod
    def _guarded(read: Callable[[int | None], bytes], size: int | None) -> bytes:
        try:
            return read(size)
        except StreamFailed as exc:
            raise _refusal(decrypt_error(exc)) from exc
        except ChildLost as exc:  # killed, out of memory: the file stays for the next pass
            raise SpoolError(str(exc)) from exc


def _first_line(raw: bytes, what: str) -> dict[str, object]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RejectedFile(RejectReason.INVALID_JSON, f"{what}: {exc}") from exc
    if not isinstance(value, dict) or value.get("format") != FORMAT_NAME:
        raise RejectedFile(RejectReason.UNKNOWN_FORMAT, f"the {what} does not name netsync-export")
    return value


def _envelope(taken: Taken, opener: Opener) -> tuple[BinaryIO, bytes, Envelope | None]:
    """The body read past its first line, that line, and (for a sealed body) its envelope,
    checked: ``RejectedFile`` for an envelope that does not fit its name, an unknown version,
    refused plaintext."""
    signed = taken.body()
    line = signed.readline(MAX_TRAILER_BYTES + 1)
    if not line.endswith(b"\n"):
        raise RejectedFile(RejectReason.INVALID_SCHEMA, "the first line is too long")
    raw = _first_line(line, "envelope")
    version = raw.get("version")
    if version == PLAINTEXT_VERSION:
        if not opener.accept_plaintext:
            raise RejectedFile(
                RejectReason.PLAINTEXT_REFUSED,
                "an unsealed (version 1) file; NETSYNC_ACCEPT_PLAINTEXT=true accepts them",
            )
        return signed, line, None
    if version != FORMAT_VERSION:
        raise RejectedFile(RejectReason.UNSUPPORTED_VERSION, f"format version {str(version)[:20]}")
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise _schema_error("envelope", exc) from exc
    if (envelope.stream, envelope.seq) != (taken.name.stream, taken.name.seq):
        raise RejectedFile(
            RejectReason.NAME_MISMATCH,
            f"envelope says {envelope.stream}/{envelope.seq}, name {taken.name.name}",
        )
    return signed, line, envelope


def unsealing_request(taken: Taken, opener: Opener) -> tuple[bytes, list[Any]] | None:
    """What decrypting a verified in-memory sealed body takes: its ciphertext and the private
    keys that open it, for a batch of bodies to be decrypted in one request to an
    ``UnsealingWorker`` and handed to ``open_body``. ``None`` for anything else, and for a body
    ``open_body`` refuses (it says why)."""
    if taken.in_memory is None:
        return None
    try:
        _, line, envelope = _envelope(taken, opener)
        if envelope is None:
            return None
        ciphertext = taken.in_memory[len(line) : -1]
        return ciphertext, opener.identities.to_open(ciphertext, envelope.sealed.recipients)
    except (RejectedFile, SealError):
        return None


def open_body(taken: Taken, opener: Opener, unsealed: bytes | StreamFailed | None = None) -> Plain:
    """The clear body of a verified file: unsealed (version 2) or, where accepted, as it is
    (version 1). ``unsealed`` is an in-memory body's plaintext (or rage's refusal of it) when
    an ``UnsealingWorker`` decrypted it already: the answer to this very body's
    ``unsealing_request``, which checked its envelope. ``RejectedFile`` for an envelope that
    does not fit its name, a body sealed to keys this importer lacks, a ciphertext that does
    not authenticate, refused plaintext."""
    if unsealed is not None and taken.in_memory is not None:
        # decrypted by a worker: its ``unsealing_request`` checked the envelope already
        if isinstance(unsealed, StreamFailed):
            raise _refusal(decrypt_error(unsealed))
        return Plain(FORMAT_VERSION, memory=unsealed)
    signed, line, envelope = _envelope(taken, opener)
    if envelope is None:
        if taken.in_memory is not None:
            return Plain(PLAINTEXT_VERSION, memory=taken.in_memory)
        return Plain(PLAINTEXT_VERSION, file=signed, length=taken.size - len(taken.trailer))
    # the body is: envelope line, ciphertext, one separating newline (before the trailer)
    length = taken.size - len(taken.trailer) - len(line) - 1
    keys = envelope.sealed.recipients
    try:
        if taken.in_memory is not None:
            body = opener.identities.unseal(taken.in_memory[len(line) : -1], keys)
            return Plain(FORMAT_VERSION, memory=body)
        try:
            stream = opener.identities.unseal_streaming(signed, length, keys)
        except OSError as exc:  # cannot start the child, read the spool: no verdict on the file
            raise SpoolError(f"cannot unseal from the spool: {exc}") from exc
        taken.keep_open(stream)
        return Plain(FORMAT_VERSION, stream=stream)
    except SealError as exc:
        raise _refusal(exc) from exc


def parse_header(line: bytes, name: FileName, version: int = FORMAT_VERSION) -> ExportHeader:
    """The header line of a verified body, checked against its name and its stream's kind,
    and against the version its file was read as (a sealed body cannot claim to be clear)."""
    raw = _first_line(line, "header")
    if raw.get("version") != version:
        found = str(raw.get("version"))[:20]
        raise RejectedFile(RejectReason.UNSUPPORTED_VERSION, f"format version {found}")
    try:
        header = ExportHeader.model_validate(raw)
    except ValidationError as exc:
        raise _schema_error("header", exc) from exc
    if (header.stream, header.seq) != (name.stream, name.seq):
        raise RejectedFile(
            RejectReason.NAME_MISMATCH,
            f"header says {header.stream}/{header.seq}, name {name.name}",
        )
    if header.kind != kind_of_stream(name.stream):
        raise RejectedFile(
            RejectReason.INVALID_SCHEMA, f"{name.stream} files are not {header.kind} files"
        )
    if header.created_at.tzinfo is None:
        raise RejectedFile(RejectReason.INVALID_SCHEMA, "header: created_at has no time zone")
    return header


@dataclass(frozen=True)
class ExportFile:
    """A verified ``changes`` file, parsed whole."""

    name: FileName
    header: ExportHeader
    records: list[ChangeRecord]
    sha256: str
    key_id: str
    size: int
    #: The exact bytes that were verified (body and trailer): what the archive keeps.
    data: bytes
    #: ``(st_dev, st_ino)`` of the exports entry that was read.
    inode: tuple[int, int] = (0, 0)


def _change_records(lines: list[bytes]) -> list[ChangeRecord]:
    records: list[ChangeRecord] = []
    for number, line in enumerate(lines, start=1):
        try:
            record = ChangeRecord.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            reason = (
                RejectReason.INVALID_JSON
                if first["type"] == "json_invalid"
                else RejectReason.INVALID_SCHEMA
            )
            raise RejectedFile(reason, f"record {number}: {first['msg']}") from exc
        if record.occurred_at.tzinfo is None:
            raise RejectedFile(
                RejectReason.INVALID_SCHEMA, f"record {number}: occurred_at has no time zone"
            )
        records.append(record)
    return records


def parse_changes(
    taken: Taken, opener: Opener, unsealed: bytes | StreamFailed | None = None
) -> ExportFile:
    """Unseal (unless ``unsealed`` holds its plaintext already, see ``open_body``) and parse a
    verified ``changes`` file held in memory."""
    signed = taken.in_memory
    if signed is None:
        raise RejectedFile(RejectReason.TOO_LARGE, "a changes file is read in memory")
    plain = open_body(taken, opener, unsealed)
    body = plain.memory
    assert body is not None
    lines = body.split(b"\n")
    if lines[-1]:
        raise RejectedFile(RejectReason.INVALID_SCHEMA, "the body does not end with a newline")
    lines.pop()
    if not lines:
        raise RejectedFile(RejectReason.INVALID_SCHEMA, "the body is empty")
    try:
        header = parse_header(lines[0], taken.name, plain.version)
        if header.records != len(lines) - 1:
            raise RejectedFile(
                RejectReason.INVALID_SCHEMA,
                f"header announces {header.records} records, file has {len(lines) - 1}",
            )
        records = _change_records(lines[1:])
    except RejectedFile:
        raise
    except (ValueError, TypeError, RecursionError) as exc:  # whatever else odd bytes cause
        raise RejectedFile(RejectReason.INVALID_SCHEMA, repr(exc)[:200]) from exc
    return ExportFile(
        taken.name,
        header,
        records,
        taken.sha256,
        taken.key_id,
        taken.size,
        signed + taken.trailer,
        taken.inode,
    )


def read_export(
    directory: Path, name: FileName, keyring: Keyring, max_bytes: int, opener: Opener
) -> ExportFile:
    """Take, verify, unseal and parse a ``changes`` file; ``RejectedFile`` for anything unsound.

    ``FileNotFoundError`` propagates unchanged: the file was taken by another importer.
    """
    if parse_file_name(name.name) != name:  # never a path: names come from a directory listing
        raise ValueError(f"not an export file name: {name.name!r}")
    with take(directory, name, keyring, max_bytes=max_bytes, memory_bytes=max_bytes) as taken:
        return parse_changes(taken, opener)


class VerifiedStream:
    """A verified file's header, then its record lines a block at a time.

    The lines come from the body unsealed from the private copy ``exchange.intake`` made while
    verifying, never from the exports directory, so what is parsed is exactly what was signed.
    """

    def __init__(self, taken: Taken, opener: Opener) -> None:
        self.taken = taken
        self.name = taken.name
        plain = open_body(taken, opener)
        self._fh: BinaryIO | Window | _Opening = plain.reader()
        self._lines: list[bytes] = []
        self._next = 0
        self._tail = b""
        line = self._fh.readline(MAX_LINE_BYTES + 1)
        if not line.endswith(b"\n"):
            raise RejectedFile(RejectReason.INVALID_SCHEMA, "the header line is too long")
        self.header = parse_header(line, self.name, plain.version)
        self._remaining = self.header.records

    def _fill(self) -> bool:
        """Read one block into complete lines; False at the end of the body."""
        chunk = self._fh.read(_READ_BUFFER)
        if not chunk:
            return False
        parts = (self._tail + chunk).split(b"\n")
        self._tail = parts.pop()
        if len(self._tail) > MAX_LINE_BYTES:
            raise RejectedFile(
                RejectReason.INVALID_SCHEMA, f"a line exceeds {MAX_LINE_BYTES} bytes"
            )
        if self._next:
            del self._lines[: self._next]
            self._next = 0
        self._lines.extend(parts)
        return True

    def record_lines(self, limit: int) -> list[bytes]:
        """The next ``limit`` (or fewer) record lines, without their newline; ``[]`` at the end.

        Past the last announced record the body must end: more or fewer lines than the header
        announces is a malformed file.
        """
        want = min(limit, self._remaining)
        while len(self._lines) - self._next < want:
            if not self._fill():
                raise RejectedFile(
                    RejectReason.INVALID_SCHEMA, "fewer records than the header announces"
                )
        lines = self._lines[self._next : self._next + want]
        self._next += want
        self._remaining -= want
        if not self._remaining and not lines:
            while self._fill():
                pass
            if len(self._lines) > self._next or self._tail:
                raise RejectedFile(
                    RejectReason.INVALID_SCHEMA, "more records than the header announces"
                )
        return lines

    @property
    def records_read(self) -> int:
        return self.header.records - self._remaining

    @property
    def sha256(self) -> str:
        return self.taken.sha256

    @property
    def key_id(self) -> str:
        return self.taken.key_id
