"""Stream marks: each stream's newest file number, kept beside the exports by the Response side.

A Response database restored from a backup forgets the files it numbered after the backup; the
exports directory does not. After each newly numbered file the Response side replaces
``latest/<stream>.mark`` with the file's generation and number, signed; before numbering again it
compares the marks with its database (``jobs.generations``): a mark the database is behind means
the database was rolled back, and numbering goes on in a new generation.

The mark is one JSON line and a signature line, a few hundred bytes. Its signature has a domain
of its own, so a mark's signature can never pass for an export file's. Whoever can write the
exports directory may delete or replay marks (an old mark is lower, so it changes nothing) but
cannot forge one, so cannot force a new generation. Marks are replaced atomically but not
fsynced: a mark lost to a power cut only hides a restore to a backup taken just after it, which
the Request side then reports as a ledger conflict (``docs/operations.md``). A mark never goes
down: a writer that finds a higher one keeps it. Reads are bounded (the known streams' names, a
KiB per mark), go through a directory descriptor opened without following a link, and take
nothing but a regular file; writes go through the same descriptor.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exchange.format import CHANGES_STREAM, LATEST_DIRNAME, RESULTS_STREAM, SNAPSHOT_STREAMS
from exchange.signing import Signer, key_id_for
from exchange.writer import ensure_dir

_DOMAIN = b"netsync-stream-mark-v1\n"
MARK_SUFFIX = ".mark"
MAX_MARK_BYTES = 1024


@dataclass(frozen=True, order=True)
class Mark:
    """The newest file a stream numbered: its generation, then its sequence number."""

    generation: int
    seq: int


def _message(body: bytes) -> bytes:
    return _DOMAIN + hashlib.sha256(body).digest()


def mark_path(exports_dir: Path, stream: str) -> Path:
    return exports_dir / LATEST_DIRNAME / f"{stream}{MARK_SUFFIX}"


#: Every stream netsync numbers: the only marks there are to read.
STREAMS = (CHANGES_STREAM, RESULTS_STREAM, *SNAPSHOT_STREAMS.values())
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def _latest(exports_dir: Path, *, create: bool) -> Iterator[int]:
    """``latest/`` as a directory descriptor, never through a link."""
    if create:
        ensure_dir(exports_dir / LATEST_DIRNAME)
    fd = os.open(exports_dir / LATEST_DIRNAME, _OPEN_DIR)
    try:
        yield fd
    finally:
        os.close(fd)


def write_mark(exports_dir: Path, signer: Signer, stream: str, mark: Mark) -> Mark | None:
    """Replace the stream's mark, unless it holds a higher one already: that one is kept and
    returned (a mark never goes down; a relay that numbered below it may be on a rolled-back
    database, which its watch then checks)."""
    public = signer.private_key.public_key()
    body = orjson.dumps(
        {"stream": stream, "generation": mark.generation, "seq": mark.seq, "key": signer.key_id}
    )
    signature = base64.b64encode(signer.private_key.sign(_message(body)))
    name = f"{stream}{MARK_SUFFIX}"
    with _latest(exports_dir, create=True) as dir_fd:
        held = _read(dir_fd, public, stream)
        if held is not None and held > mark:
            return held
        temp = f".{name}.{uuid.uuid4().hex}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        data = body + b"\n" + signature + b"\n"
        fd = os.open(temp, flags, 0o640, dir_fd=dir_fd)
        try:
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write of a stream mark")
            finally:
                os.close(fd)
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
    return None


def read_marks(exports_dir: Path, public_key: Ed25519PublicKey) -> dict[str, Mark]:
    """The mark of every stream netsync writes whose signature holds. The names are known, so
    nothing else in ``latest/`` (junk, leftovers of a crash) is looked at, or can crowd one out."""
    marks: dict[str, Mark] = {}
    try:
        with _latest(exports_dir, create=False) as dir_fd:
            for stream in STREAMS:
                if (mark := _read(dir_fd, public_key, stream)) is not None:
                    marks[stream] = mark
    except OSError:
        return marks
    return marks


def _read(dir_fd: int, public_key: Ed25519PublicKey, stream: str) -> Mark | None:
    try:
        fd = os.open(
            f"{stream}{MARK_SUFFIX}",
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, MAX_MARK_BYTES + 1)
    finally:
        os.close(fd)
    lines = data.split(b"\n")
    if len(data) > MAX_MARK_BYTES or len(lines) != 3 or lines[2]:
        return None
    body, signature = lines[0], lines[1]
    try:
        public_key.verify(base64.b64decode(signature, validate=True), _message(body))
        fields = orjson.loads(body)
    except (InvalidSignature, binascii.Error, ValueError):
        return None
    if fields.get("stream") != stream or fields.get("key") != key_id_for(public_key):
        return None
    generation, seq = fields.get("generation"), fields.get("seq")
    if type(generation) is not int or type(seq) is not int:
        return None
    return Mark(generation, seq)
