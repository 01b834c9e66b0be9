"""Parsing export files that ``exchange.intake`` has verified and ``exchange.opening`` opened.

Nothing here reads the exports directory or sees a byte whose signature was not checked: the
input is a ``Taken``, the private copy of a verified body, and its clear body comes from
``exchange.opening.open_body``, decrypted whole (or streamed with its failure at the end
refusing the file) before a record is applied. Two shapes share one header check:

* ``read_export``: a small file (``changes``) parsed whole into typed records, for batching;
* ``VerifiedStream``: a large or single file (snapshots, results) handed out a block of record
  lines at a time, so a million-row snapshot costs a few MB of memory.

A genuine file can still be malformed (a bug on the writing side): every refusal is a
``RejectedFile`` with a stable reason the importer quarantines by.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from exchange.format import (
    FORMAT_VERSION,
    ChangeRecord,
    ExportHeader,
    FileName,
    kind_of_stream,
    parse_file_name,
)
from exchange.intake import RejectedFile, RejectReason, Taken, take
from exchange.opening import Opener, Opening, first_line, open_body, schema_error
from exchange.seal_streams import StreamFailed
from exchange.signing import Keyring
from exchange.window import Window

__all__ = [
    "MAX_LINE_BYTES",
    "ExportFile",
    "RejectReason",
    "RejectedFile",
    "VerifiedStream",
    "parse_changes",
    "parse_header",
    "read_export",
]

#: No line of a streamed file may be longer than this: a bound on what one line costs.
MAX_LINE_BYTES = 1 << 20
_READ_BUFFER = 1 << 20


def parse_header(line: bytes, name: FileName, version: int = FORMAT_VERSION) -> ExportHeader:
    """The header line of a verified body, checked against its name and its stream's kind,
    and against the version its file was read as (a sealed body cannot claim to be clear)."""
    raw = first_line(line, "header")
    if raw.get("version") != version:
        found = str(raw.get("version"))[:20]
        raise RejectedFile(RejectReason.UNSUPPORTED_VERSION, f"format version {found}")
    try:
        header = ExportHeader.model_validate(raw)
    except ValidationError as exc:
        raise schema_error("header", exc) from exc
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
        self._fh: BinaryIO | Window | Opening = plain.reader()
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
