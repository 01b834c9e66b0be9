"""Publishing an export file so that a reader can never see it half-written.

The file is written under a unique name in the staging directory (``<exports>/.staging``, on the
same file system and never read by the importer), fsynced, renamed into place with ``os.replace``
(atomic on POSIX), and the directory is fsynced so that a crash cannot lose the rename. A failure
at any step, a full disk included, removes the staging file and raises: nothing partial is ever
visible under a final name, and the caller still holds the data to try again.

Publishing the same stream and sequence number twice is allowed and harmless: the producer
regenerates a file from durable state, so a second publication carries the same records under the
same file id (in new ciphertext: sealing is randomised, so the bytes differ).

Files are sealed to the Request Network's recipients (``exchange.sealing``): the clear envelope
line is written first, and the body (header and records) goes into the ciphertext, in memory for
a small file, through a sealing child process once it grows past ``STREAM_ABOVE_BYTES``, or
from the start for one announcing ``STREAM_FROM_START_RECORDS`` records (the
child writes the ciphertext into the staging file itself and reports the file's digest, which is
what gets signed: the ciphertext of a snapshot never comes back through this process). Files
and staging files are created ``0640`` (a group for the transfer agent, nobody else), and the
directories netsync creates ``0750``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from exchange.format import (
    FILE_SUFFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    LATEST_DIRNAME,
    PLAINTEXT_VERSION,
    STAGING_DIRNAME,
    file_name,
)
from exchange.seal_streams import SealingStream
from exchange.sealing import SEAL_ALG, Recipients
from exchange.signing import SIGNATURE_ALG, Signer

#: Mode of every export and staging file: the owner writes, a transfer agent's group reads.
FILE_MODE = 0o640
#: Mode of the directories netsync creates under the exports directory (and the directory itself).
DIR_MODE = 0o750
#: A sealed body is kept in memory up to this size, then streamed through the sealing process.
STREAM_ABOVE_BYTES = 8 << 20
#: A file announcing this many records (a snapshot of a large table; a changes file holds at
#: most 1,000) starts its sealing child at once: the child's start-up (a new interpreter, about
#: 40 ms) then overlaps the database's first rows instead of stalling the copy once the body
#: has grown past ``STREAM_ABOVE_BYTES``.
STREAM_FROM_START_RECORDS = 20_000


@dataclass(frozen=True)
class PublishedFile:
    name: str
    path: Path
    sha256: str
    size: int
    records: int


def _line(obj: Mapping[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and its parents) ``0750`` if missing; an existing one is left as the
    operator made it."""
    if path.is_dir():
        return
    ensure_dir(path.parent)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return
    # mkdir's mode is narrowed by the umask, never widened; a setgid bit inherited from the
    # parent (a shared transfer group) is kept, so files in it stay that group's
    os.chmod(path, DIR_MODE | (os.stat(path).st_mode & stat.S_ISGID))


def _create(path: Path) -> BinaryIO:
    # read and write: a sealing child hashes the envelope from this descriptor
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # exactly 0640, whatever the umask
    return os.fdopen(fd, "wb")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ExportFileWriter:
    """Streams one export file into staging; ``publish()`` makes it visible atomically.

    Records are written as they come, so a snapshot of any size needs memory for one block
    only. ``recipients=None`` writes the previous, unsealed format (version 1): only tests of the
    upgrade path and a development setup without keys do that.
    """

    def __init__(
        self,
        exports_dir: Path,
        signer: Signer,
        *,
        recipients: Recipients | None,
        stream: str,
        seq: int,
        kind: str,
        file_id: uuid.UUID,
        created_at: datetime,
        records: int,
        header: Mapping[str, Any] | None = None,
    ) -> None:
        self.final_name = file_name(stream, seq)
        self.exports_dir = exports_dir
        staging = exports_dir / STAGING_DIRNAME
        ensure_dir(staging)
        self._staging_path = staging / f"{self.final_name}.{uuid.uuid4().hex}.tmp"
        self._signer = signer
        self._recipients = recipients
        self._digest = hashlib.sha256()
        self._expected = records
        self._written = 0
        self._plain = bytearray()
        self._stream: SealingStream | None = None
        self._fh = _create(self._staging_path)
        try:  # a header orjson refuses, a child that would not start, a full disk: nothing stays
            body_header = _line(
                {
                    "format": FORMAT_NAME,
                    "version": PLAINTEXT_VERSION if recipients is None else FORMAT_VERSION,
                    "stream": stream,
                    "seq": seq,
                    "file_id": str(file_id),
                    "kind": kind,
                    "created_at": created_at.isoformat(),
                    "records": records,
                    **(header or {}),
                }
            )
            if recipients is None:
                self._write(body_header)
                return
            if not recipients:
                raise ValueError("a sealed file needs at least one recipient")
            envelope = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "stream": stream,
                "seq": seq,
                "sealed": {"alg": SEAL_ALG, "recipients": recipients.key_ids},
            }
            self._write(_line(envelope))
            if records >= STREAM_FROM_START_RECORDS:
                self._start_stream()
            self._put(body_header)
        except BaseException:
            self.abort()
            raise

    def _start_stream(self) -> None:
        """Hand the body to a sealing child from here on (what it holds so far first)."""
        assert self._recipients is not None
        self._fh.flush()  # the envelope, on file for the child to hash
        self._stream = self._recipients.stream(self._fh.fileno(), self._fh.tell())
        if self._plain:
            self._stream.write(bytes(self._plain))
            self._plain = bytearray()

    def _write(self, data: bytes) -> None:
        """Bytes of the file itself (envelope, ciphertext, or a clear body): hashed, written."""
        self._digest.update(data)
        self._fh.write(data)

    def _put(self, data: bytes) -> None:
        """Bytes of the body: in clear (version 1), or into the sealing."""
        if self._recipients is None:
            self._write(data)
        elif self._stream is not None:
            self._stream.write(data)
        else:
            self._plain += data
            if len(self._plain) > STREAM_ABOVE_BYTES:
                self._start_stream()

    def _seal_body(self) -> bytes:
        """End the ciphertext, and the line it stands on (the trailer starts a line); the
        SHA-256 of the file's bytes so far (the sealing child's, if it wrote them)."""
        if self._recipients is None:
            return self._digest.digest()
        if self._stream is not None:
            stream, self._stream = self._stream, None
            digest, end = stream.close()
            self._fh.seek(end)  # past what the child wrote
            return digest
        self._write(self._recipients.seal(bytes(self._plain)))
        self._plain = bytearray()
        self._write(b"\n")
        return self._digest.digest()

    def write_record(self, record: Mapping[str, Any]) -> None:
        self._put(_line(record))
        self._written += 1

    def write_lines(self, data: bytes, count: int) -> None:
        """Append ``count`` records already serialised as JSON lines (a snapshot's fast path)."""
        self._put(data)
        self._written += count

    def publish(self, *, latest_as: str | None = None) -> PublishedFile:
        """Sign, fsync, rename into place and fsync the directory.

        ``latest_as`` also points ``<exports>/latest/<latest_as>.jsonl`` at this file. The link is
        made from the staging file before the rename (a hard link, a copy where the file system
        refuses one), so an importer that archives the file at once cannot race it away, and it
        replaces the stable name only once the file is published: a reader of the stable name
        sees the previous file or this one, never a mixture or an unpublished file.
        """
        latest_temp: Path | None = None
        try:
            if self._written != self._expected:
                raise ValueError(
                    f"header announced {self._expected} records, wrote {self._written}"
                )
            digest = self._seal_body()
            trailer = {
                "signature": {
                    "alg": SIGNATURE_ALG,
                    "key_id": self._signer.key_id,
                    "sha256": digest.hex(),
                    "value": base64.b64encode(self._signer.sign(digest)).decode(),
                }
            }
            self._fh.write(_line(trailer))
            self._fh.flush()
            os.fsync(self._fh.fileno())
            size = self._fh.tell()
            self._fh.close()
            if latest_as is not None:
                latest_temp = self._link_for_latest()
            final = self.exports_dir / self.final_name
            os.replace(self._staging_path, final)
            fsync_dir(self.exports_dir)
            if latest_temp is not None:
                os.replace(latest_temp, latest_temp.parent / f"{latest_as}{FILE_SUFFIX}")
                fsync_dir(latest_temp.parent)
        except BaseException:
            if latest_temp is not None:
                with contextlib.suppress(FileNotFoundError):
                    latest_temp.unlink()
            self.abort()
            raise
        return PublishedFile(self.final_name, final, digest.hex(), size, self._written)

    def _link_for_latest(self) -> Path:
        latest = self.exports_dir / LATEST_DIRNAME
        ensure_dir(latest)
        temp = latest / f".{self.final_name}.{uuid.uuid4().hex}.tmp"
        try:
            os.link(self._staging_path, temp)
        except OSError:
            try:
                with open(self._staging_path, "rb") as src, _create(temp) as dst:
                    shutil.copyfileobj(src, dst)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
                raise
        return temp

    def abort(self) -> None:
        """Drop the staging file; nothing becomes visible."""
        try:
            if self._stream is not None:
                stream, self._stream = self._stream, None
                stream.abort()
        finally:
            with contextlib.suppress(OSError):
                self._fh.close()
            with contextlib.suppress(FileNotFoundError):
                self._staging_path.unlink()


def publish_export(
    exports_dir: Path,
    signer: Signer,
    *,
    recipients: Recipients | None,
    stream: str,
    seq: int,
    kind: str,
    file_id: uuid.UUID,
    created_at: datetime,
    records: Iterable[Mapping[str, Any]],
    header: Mapping[str, Any] | None = None,
) -> PublishedFile:
    """Write and publish a file whose records are all at hand (the incremental case)."""
    items = list(records)
    writer = ExportFileWriter(
        exports_dir,
        signer,
        recipients=recipients,
        stream=stream,
        seq=seq,
        kind=kind,
        file_id=file_id,
        created_at=created_at,
        records=len(items),
        header=header,
    )
    try:
        for item in items:
            writer.write_record(item)
    except BaseException:
        writer.abort()
        raise
    return writer.publish()
