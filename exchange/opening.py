"""The clear body of an export file that ``exchange.intake`` has verified: unsealed, or as it is.

Verify, then unseal, then parse: the input is a ``Taken``, the private copy of a verified body,
and nothing here reads the exports directory. ``open_body`` reads the clear envelope, checks
that it fits the file's name and that this importer holds a key the body is sealed to, and
decrypts the body (in memory, or streamed from the importer's spool through the unsealing
child for a large file, whose failure at its end refuses the file before it is applied).
``exchange.reader`` parses what it gives; every refusal is a ``RejectedFile`` with a stable
reason.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson
from pydantic import ValidationError

from exchange.format import FORMAT_NAME, FORMAT_VERSION, PLAINTEXT_VERSION, Envelope
from exchange.intake import MAX_TRAILER_BYTES, RejectedFile, RejectReason, SpoolError, Taken
from exchange.seal_streams import ChildLost, StreamFailed, UnsealingStream
from exchange.sealing import Identities, SealError, decrypt_error
from exchange.window import Window

__all__ = [
    "Opener",
    "Opening",
    "Plain",
    "first_line",
    "open_body",
    "schema_error",
    "unsealing_request",
]


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

    def reader(self) -> BinaryIO | Window | Opening:
        if self.memory is not None:
            return io.BytesIO(self.memory)
        if self.stream is not None:
            return Opening(self.stream)
        assert self.file is not None
        self.file.seek(0)
        return Window(self.file, self.length)


def refusal(exc: SealError) -> RejectedFile:
    return RejectedFile(RejectReason(exc.reason.value), exc.detail)


def schema_error(what: str, exc: ValidationError) -> RejectedFile:
    """A refusal naming the first thing pydantic found wrong (never the input itself)."""
    return RejectedFile(RejectReason.INVALID_SCHEMA, f"{what}: {exc.errors()[0]['msg']}")


class Opening:
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
            raise refusal(decrypt_error(exc)) from exc
        except ChildLost as exc:  # killed, out of memory: the file stays for the next pass
            raise SpoolError(str(exc)) from exc


def first_line(raw: bytes, what: str) -> dict[str, object]:
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
    raw = first_line(line, "envelope")
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
        raise schema_error("envelope", exc) from exc
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
            raise refusal(decrypt_error(unsealed))
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
        raise refusal(exc) from exc
