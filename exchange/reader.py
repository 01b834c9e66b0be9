"""Reading an export file as untrusted input: checked, verified, then parsed.

Order matters. The file is opened without following symlinks and must be a regular file no larger
than the configured limit (checked before reading it). The signature trailer is verified over the
exact bytes before anything else is parsed, so a forged or damaged file never reaches the JSON
parser's output. Only then are the header and records validated against the typed contract.
Every refusal is a ``RejectedFile`` with a stable reason the importer records and quarantines by.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import orjson
from pydantic import ValidationError

from exchange.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ChangeRecord,
    ExportHeader,
    FileName,
    parse_file_name,
)
from exchange.signing import SIGNATURE_ALG, Keyring


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
    #: Not an export file name at all: recorded once, left where it is, never read.
    NOT_AN_EXPORT_NAME = "not_an_export_name"


class RejectedFile(Exception):
    """A file that must not be applied, and why."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ExportFile:
    name: FileName
    header: ExportHeader
    records: list[ChangeRecord]
    sha256: str
    key_id: str
    size: int


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RejectedFile(RejectReason.UNREADABLE, exc.strerror or repr(exc)) from exc
    if stat.S_ISLNK(st.st_mode):
        raise RejectedFile(RejectReason.SYMLINK, "symbolic links are never followed")
    if not stat.S_ISREG(st.st_mode):
        raise RejectedFile(RejectReason.NOT_REGULAR, f"file mode {stat.filemode(st.st_mode)}")
    if st.st_size > max_bytes:
        raise RejectedFile(RejectReason.TOO_LARGE, f"{st.st_size} bytes > limit {max_bytes}")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symlink between lstat and open
            raise RejectedFile(RejectReason.SYMLINK, "symbolic links are never followed") from exc
        if isinstance(exc, FileNotFoundError):
            raise
        raise RejectedFile(RejectReason.UNREADABLE, exc.strerror or repr(exc)) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RejectedFile(RejectReason.NOT_REGULAR, f"file mode {stat.filemode(st.st_mode)}")
        chunks: list[bytes] = []
        remaining = max_bytes + 1
        while remaining > 0:
            try:
                chunk = os.read(fd, min(remaining, 1 << 20))
            except OSError as exc:
                raise RejectedFile(RejectReason.UNREADABLE, exc.strerror or repr(exc)) from exc
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise RejectedFile(RejectReason.TOO_LARGE, f"grew past the limit of {max_bytes} bytes")
    return data


def _verify(data: bytes, keyring: Keyring) -> tuple[bytes, str, str]:
    """Split off and verify the trailer; return the signed body, its digest and the key id."""
    if not data.endswith(b"\n"):
        raise RejectedFile(RejectReason.TRUNCATED, "the file does not end with a complete line")
    cut = data.rfind(b"\n", 0, len(data) - 1)
    if cut < 0:
        raise RejectedFile(RejectReason.TRUNCATED, "no header before the last line")
    body, trailer_line = data[: cut + 1], data[cut + 1 :]
    try:
        trailer = orjson.loads(trailer_line)
        sig = trailer["signature"]
        alg, key_id, digest_hex = sig["alg"], sig["key_id"], sig["sha256"]
        value = base64.b64decode(sig["value"], validate=True)
    except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error, ValueError) as exc:
        raise RejectedFile(RejectReason.UNSIGNED, "the last line is not a signature") from exc
    if alg != SIGNATURE_ALG or not isinstance(key_id, str) or not isinstance(digest_hex, str):
        raise RejectedFile(RejectReason.UNSIGNED, f"unsupported signature {alg!r}")
    if key_id not in keyring:
        raise RejectedFile(RejectReason.UNKNOWN_KEY, f"key id {key_id[:32]!r} is not trusted")
    digest = hashlib.sha256(body).digest()
    if digest.hex() != digest_hex:
        raise RejectedFile(RejectReason.BAD_SIGNATURE, "content does not match the signed digest")
    if not keyring.verify(key_id, digest, value):
        raise RejectedFile(RejectReason.BAD_SIGNATURE, f"signature does not verify with {key_id}")
    return body, digest.hex(), key_id


def _parse(name: FileName, body: bytes) -> tuple[ExportHeader, list[ChangeRecord]]:
    lines = body.split(b"\n")[:-1]
    try:
        raw_header = orjson.loads(lines[0])
    except orjson.JSONDecodeError as exc:
        raise RejectedFile(RejectReason.INVALID_JSON, f"header: {exc}") from exc
    if not isinstance(raw_header, dict) or raw_header.get("format") != FORMAT_NAME:
        raise RejectedFile(RejectReason.UNKNOWN_FORMAT, "the header does not name netsync-export")
    if raw_header.get("version") != FORMAT_VERSION:
        version = str(raw_header.get("version"))[:20]
        raise RejectedFile(RejectReason.UNSUPPORTED_VERSION, f"format version {version}")
    try:
        header = ExportHeader.model_validate(raw_header)
    except ValidationError as exc:
        raise RejectedFile(
            RejectReason.INVALID_SCHEMA, f"header: {exc.errors()[0]['msg']}"
        ) from exc
    if (header.stream, header.seq) != (name.stream, name.seq):
        raise RejectedFile(
            RejectReason.NAME_MISMATCH,
            f"header says {header.stream}/{header.seq}, name {name.name}",
        )
    if header.created_at.tzinfo is None:
        raise RejectedFile(RejectReason.INVALID_SCHEMA, "header: created_at has no time zone")
    if header.records != len(lines) - 1:
        raise RejectedFile(
            RejectReason.INVALID_SCHEMA,
            f"header announces {header.records} records, file has {len(lines) - 1}",
        )
    records: list[ChangeRecord] = []
    for number, line in enumerate(lines[1:], start=1):
        try:
            records.append(ChangeRecord.model_validate_json(line))
        except ValidationError as exc:
            first = exc.errors()[0]
            reason = (
                RejectReason.INVALID_JSON
                if first["type"] == "json_invalid"
                else RejectReason.INVALID_SCHEMA
            )
            raise RejectedFile(reason, f"record {number}: {first['msg']}") from exc
        if records[-1].occurred_at.tzinfo is None:
            raise RejectedFile(
                RejectReason.INVALID_SCHEMA, f"record {number}: occurred_at has no time zone"
            )
    return header, records


def read_export(directory: Path, name: FileName, keyring: Keyring, max_bytes: int) -> ExportFile:
    """Read, verify and parse ``directory/name``; raise ``RejectedFile`` for anything unsound.

    ``FileNotFoundError`` propagates unchanged: the file was taken by another importer.
    """
    if parse_file_name(name.name) != name:  # never a path: names come from a directory listing
        raise ValueError(f"not an export file name: {name.name!r}")
    data = _read_bounded(directory / name.name, max_bytes)
    body, digest, key_id = _verify(data, keyring)
    try:
        header, records = _parse(name, body)
    except RejectedFile:
        raise
    except (ValueError, TypeError, RecursionError) as exc:  # whatever else hostile bytes cause
        raise RejectedFile(RejectReason.INVALID_SCHEMA, repr(exc)[:200]) from exc
    return ExportFile(name, header, records, digest, key_id, len(data))
