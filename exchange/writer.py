"""Publishing an export file so that a reader can never see it half-written.

The file is written under a unique name in the staging directory (``<exports>/.staging``, on the
same file system and never read by the importer), fsynced, renamed into place with ``os.replace``
(atomic on POSIX), and the directory is fsynced so that a crash cannot lose the rename. A failure
at any step, a full disk included, removes the staging file and raises: nothing partial is ever
visible under a final name, and the caller still holds the data to try again.

Publishing the same stream and sequence number twice is allowed and harmless: the producer
regenerates a file from durable state, so a second publication carries the same records.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from exchange.format import FORMAT_NAME, FORMAT_VERSION, STAGING_DIRNAME, file_name
from exchange.signing import SIGNATURE_ALG, Signer


@dataclass(frozen=True)
class PublishedFile:
    name: str
    path: Path
    sha256: str
    size: int
    records: int


def _line(obj: Mapping[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ExportFileWriter:
    """Streams one export file into staging; ``publish()`` makes it visible atomically.

    Records are written as they come, so a snapshot of any size needs memory for one record only.
    """

    def __init__(
        self,
        exports_dir: Path,
        signer: Signer,
        *,
        stream: str,
        seq: int,
        kind: str,
        file_id: uuid.UUID,
        created_at: datetime,
        records: int,
    ) -> None:
        self.final_name = file_name(stream, seq)
        self.exports_dir = exports_dir
        staging = exports_dir / STAGING_DIRNAME
        staging.mkdir(parents=True, exist_ok=True)
        self._staging_path = staging / f"{self.final_name}.{uuid.uuid4().hex}.tmp"
        self._signer = signer
        self._digest = hashlib.sha256()
        self._expected = records
        self._written = 0
        self._fh = open(self._staging_path, "xb")  # noqa: SIM115 - closed in publish()/abort()
        self._write(
            _line(
                {
                    "format": FORMAT_NAME,
                    "version": FORMAT_VERSION,
                    "stream": stream,
                    "seq": seq,
                    "file_id": str(file_id),
                    "kind": kind,
                    "created_at": created_at.isoformat(),
                    "records": records,
                }
            )
        )

    def _write(self, data: bytes) -> None:
        self._digest.update(data)
        self._fh.write(data)

    def write_record(self, record: Mapping[str, Any]) -> None:
        self._write(_line(record))
        self._written += 1

    def publish(self) -> PublishedFile:
        """Sign, fsync, rename into place and fsync the directory."""
        try:
            if self._written != self._expected:
                raise ValueError(
                    f"header announced {self._expected} records, wrote {self._written}"
                )
            digest = self._digest.digest()
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
            final = self.exports_dir / self.final_name
            os.replace(self._staging_path, final)
            fsync_dir(self.exports_dir)
        except BaseException:
            self.abort()
            raise
        return PublishedFile(self.final_name, final, digest.hex(), size, self._written)

    def abort(self) -> None:
        """Drop the staging file; nothing becomes visible."""
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self._staging_path.unlink()


def publish_export(
    exports_dir: Path,
    signer: Signer,
    *,
    stream: str,
    seq: int,
    kind: str,
    file_id: uuid.UUID,
    created_at: datetime,
    records: Iterable[Mapping[str, Any]],
) -> PublishedFile:
    """Write and publish a file whose records are all at hand (the incremental case)."""
    items = list(records)
    writer = ExportFileWriter(
        exports_dir,
        signer,
        stream=stream,
        seq=seq,
        kind=kind,
        file_id=file_id,
        created_at=created_at,
        records=len(items),
    )
    try:
        for item in items:
            writer.write_record(item)
    except BaseException:
        writer.abort()
        raise
    return writer.publish()
