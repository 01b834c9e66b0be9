"""Sealing export files to the Request Network: readable by nobody on the way.

Export files carry every password hash and every setting, so their records are encrypted to the
Request Network's public keys with age (X25519 recipients, ChaCha20-Poly1305 in 64 KiB chunks,
an HMAC over the header), through ``pyrage``, the Python binding of the audited ``rage``
implementation. The format is a standard one, so Debian's ``age`` CLI decrypts a body for
forensics, and no cryptography is written here (``docs/exchange-format.md`` says why age).

The Response side holds only recipients (public keys: ``age1…``), the Request side its
identities (private keys: ``AGE-SECRET-KEY-1…``, files an operator can hand to ``age -i``).
Both are named by a *key id*, the first 16 hex digits of the SHA-256 of the recipient string, so
a file's clear envelope can say which keys can open it, and an importer that holds none of them
can say which one it needs, without trying to decrypt.

Sealing a small file happens in memory; a large one (a snapshot of a million rows) streams
through a child process that writes the ciphertext into the file, so that encryption runs on
the other core while this process reads the database (``pyrage`` holds the GIL while it
encrypts). Unsealing happens in the importer, after the signature held, into memory or the
importer's own spool.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import pyrage
from pyrage import x25519

from exchange.seal_streams import SealingStream, UnsealingStream

log = logging.getLogger(__name__)

#: The envelope's name for the sealing: age with X25519 recipients.
SEAL_ALG = "age-x25519"
#: A recipient or identity file holds a few short lines; anything larger is not one.
MAX_KEY_FILE_BYTES = 64 * 1024
#: Recipient files (public keys) in a recipients directory, identity files (private keys) in a
#: decryption keys directory.
RECIPIENT_SUFFIX = ".age.pub"
IDENTITY_SUFFIX = ".age.key"
#: Permission bits an identity file may not have: any for others, group write or execute.
#: Owner-only (0600, 0400) or group-readable for a key-holding group (0640, 0440) pass.
FORBIDDEN_IDENTITY_BITS = 0o037


#: An age header holds one stanza per recipient (~120 bytes for X25519) and a MAC line: one
#: longer than this, or with more stanzas than a file may name recipients, is not ours.
MAX_RECIPIENTS = 64
MAX_AGE_HEADER_BYTES = 16 * 1024
#: rage adds a random "grease" stanza to some headers (the age spec lets any implementation):
#: a header may hold that many more stanzas than the envelope names recipients.
_GREASE = 2


class SealReason(StrEnum):
    """Why a genuine (signed) sealed body could not be opened."""

    #: Encrypted to keys this importer does not hold.
    UNKNOWN_RECIPIENT = "unknown_recipient"
    #: The ciphertext ends before its last chunk.
    TRUNCATED = "sealed_truncated"
    #: A chunk or the header does not authenticate (altered, reordered, swapped).
    CORRUPT = "sealed_corrupt"


class SealError(Exception):
    def __init__(self, reason: SealReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class KeyFileError(ValueError):
    """A key file that must not be used (unreadable, malformed, or a private key others can
    read)."""


def key_id_of(recipient: str) -> str:
    """A short, stable identifier of an age recipient (public key)."""
    return hashlib.sha256(recipient.strip().encode()).hexdigest()[:16]


def decrypt_error(exc: Exception) -> SealError:
    """Name what ``rage`` refused. Its messages are the only distinction it offers: "No matching
    keys found", "age file is truncated", else a chunk or header that did not authenticate."""
    message = str(exc)
    if "no matching keys" in message.lower():
        return SealError(SealReason.UNKNOWN_RECIPIENT, message[:200])
    if "truncated" in message.lower():
        return SealError(SealReason.TRUNCATED, message[:200])
    return SealError(SealReason.CORRUPT, message[:200] or type(exc).__name__)


def check_header(head: bytes, stanzas: int) -> None:
    """Refuse an age header that is larger or has more stanzas than netsync ever writes, before
    ``rage`` parses it: a signed file only can get here, but a buggy or compromised producer
    must not make the importer spend minutes on a header of a million stanzas."""
    end = head.find(b"\n--- ", 0, MAX_AGE_HEADER_BYTES)
    if not head.startswith(b"age-encryption.org/v1\n") or end < 0:
        raise SealError(SealReason.CORRUPT, f"no age header within {MAX_AGE_HEADER_BYTES} bytes")
    found = head.count(b"\n-> ", 0, end + 1)
    if found > stanzas + _GREASE:
        raise SealError(
            SealReason.CORRUPT, f"{found} recipient stanzas, the envelope names {stanzas}"
        )


def _key_lines(data: bytes) -> list[str]:
    """The key lines of an age-style key file: ``#`` comments and blank lines skipped."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise KeyFileError("not an ASCII key file") from exc
    return [s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")]


def read_key_file(path: Path, *, private: bool) -> bytes:
    """Read a key file bounded; links are followed (Kubernetes mounts secrets as links: the
    directory is the operator's, not the exports directory). A private key that others may
    read is refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path.name}: not a regular file ({stat.filemode(st.st_mode)})")
        if private and st.st_mode & FORBIDDEN_IDENTITY_BITS:
            raise KeyFileError(
                f"{path.name}: mode {stat.filemode(st.st_mode)} lets others read or change a "
                "private key (chmod 0600, or 0640 for a key-holding group)"
            )
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"{path.name}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path.name}: larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def _parse_recipients(recipients: Iterable[str]) -> dict[str, Any]:
    """``age1…`` strings by their canonical form (bech32 is case-insensitive: the key id is
    taken of the form the importer computes); ``KeyFileError`` for one that is not a recipient
    (the input is never echoed: it may be a private key put in the wrong place)."""
    canonical: dict[str, Any] = {}
    for item in (r.strip() for r in recipients):
        if not item:
            continue
        if item.upper().startswith("AGE-SECRET-KEY-"):
            raise KeyFileError("a private key where a recipient (age1…) belongs: remove it")
        try:
            parsed = x25519.Recipient.from_str(item)
        except Exception as exc:  # pyrage.RecipientError, ValueError
            raise KeyFileError("not an age X25519 recipient (age1…)") from exc
        canonical[str(parsed)] = parsed
    return canonical


@dataclass(frozen=True)
class Recipients:
    """The public keys every export file is sealed to (the Response side's view)."""

    keys: tuple[str, ...] = ()
    _parsed: tuple[Any, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def of(cls, recipients: Iterable[str]) -> Recipients:
        """Parse ``age1…`` strings (``_parse_recipients``), duplicates dropped, at most
        ``MAX_RECIPIENTS``."""
        return cls._of_parsed(_parse_recipients(recipients))

    @classmethod
    def _of_parsed(cls, canonical: dict[str, Any]) -> Recipients:
        if len(canonical) > MAX_RECIPIENTS:
            raise KeyFileError(f"{len(canonical)} recipients: at most {MAX_RECIPIENTS}")
        keys = sorted(canonical)
        return cls(tuple(keys), tuple(canonical[k] for k in keys))

    @classmethod
    def from_sources(cls, directory: Path | None, inline: Iterable[str] = ()) -> Recipients:
        """Every ``*.age.pub`` of ``directory`` plus inline recipients. A file that does not
        load is logged and skipped (the others still seal), like the trusted keys."""
        found = _parse_recipients(inline)
        if directory is not None and directory.is_dir():
            for path in sorted(directory.glob(f"*{RECIPIENT_SUFFIX}")):
                try:
                    found.update(_parse_recipients(_key_lines(read_key_file(path, private=False))))
                except KeyFileError as exc:
                    log.error("ignoring a recipient file", extra={"error": str(exc)[:300]})
        return cls._of_parsed(found)

    @property
    def key_ids(self) -> list[str]:
        return sorted(key_id_of(r) for r in self.keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt a body held in memory (a ``changes`` or ``results`` file)."""
        return bytes(pyrage.encrypt(plaintext, list(self._parsed)))

    def stream(self, fd: int, start: int) -> SealingStream:
        """Encrypt a body written piecewise into the open file ``fd``, after ``start``."""
        return SealingStream(self.keys, fd, start)


@dataclass(frozen=True)
class Identities:
    """The private keys an importer opens files with, by key id (the Request side's view)."""

    by_key_id: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, secrets: Iterable[str]) -> Identities:
        found: dict[str, Any] = {}
        for secret in secrets:
            try:
                identity = x25519.Identity.from_str(secret.strip())
            except Exception as exc:  # pyrage.IdentityError
                raise KeyFileError("not an age X25519 identity") from exc
            found[key_id_of(str(identity.to_public()))] = identity
        return cls(found)

    @classmethod
    def from_directory(cls, directory: Path | None, *, strict: bool) -> Identities:
        """Every ``*.age.key`` of ``directory``. ``strict`` (at start-up) raises on a file that
        does not load, a private key others may read above all; otherwise (a reload while
        running) such a file is logged and skipped, and the daemon keeps its other keys."""
        found: dict[str, Any] = {}
        if directory is None or not directory.is_dir():
            return cls(found)
        for path in sorted(directory.glob(f"*{IDENTITY_SUFFIX}")):
            try:
                found.update(cls.of(_key_lines(read_key_file(path, private=True))).by_key_id)
            except KeyFileError as exc:
                if strict:
                    raise
                log.error("ignoring a decryption key file", extra={"error": str(exc)[:300]})
        return cls(found)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self.by_key_id)

    def __bool__(self) -> bool:
        return bool(self.by_key_id)

    def check_recipients(self, key_ids: Iterable[str]) -> None:
        """``SealError(unknown_recipient)`` unless one of ``key_ids`` is held here."""
        wanted = list(key_ids)
        if not any(k in self.by_key_id for k in wanted):
            needs = ", ".join(k[:16] for k in wanted[:8]) or "none named"
            holds = ", ".join(self.key_ids) or "no key"
            raise SealError(
                SealReason.UNKNOWN_RECIPIENT, f"sealed to {needs}; this importer holds {holds}"
            )

    def _for(self, key_ids: Iterable[str]) -> list[Any]:
        self.check_recipients(key_ids)
        return [self.by_key_id[k] for k in key_ids if k in self.by_key_id]

    def to_open(self, body: bytes, key_ids: Iterable[str]) -> list[Any]:
        """The identities to open ``body`` (sealed to ``key_ids``) with, once its age header is
        within what netsync writes: what an ``UnsealingWorker`` is handed with it."""
        return self._for_header(key_ids, body[:MAX_AGE_HEADER_BYTES])

    def _for_header(self, key_ids: Iterable[str], head: bytes) -> list[Any]:
        """The identities to open a body sealed to ``key_ids`` with, once its age header (the
        first bytes, ``head``) is within what netsync writes."""
        wanted = list(key_ids)
        identities = self._for(wanted)
        check_header(head, len(wanted))
        return identities

    def unseal(self, ciphertext: bytes, key_ids: Iterable[str]) -> bytes:
        identities = self._for_header(key_ids, ciphertext[:MAX_AGE_HEADER_BYTES])
        try:
            return bytes(pyrage.decrypt(ciphertext, identities))
        except pyrage.DecryptError as exc:
            raise decrypt_error(exc) from exc

    def unseal_streaming(
        self, source: BinaryIO, length: int, key_ids: Iterable[str]
    ) -> UnsealingStream:
        """Decrypt ``length`` bytes of ``source`` (a real file, from where it stands) in a
        child process, handing the plaintext out as it comes."""
        start = source.tell()
        identities = self._for_header(key_ids, source.read(min(length, MAX_AGE_HEADER_BYTES)))
        source.seek(start)
        return UnsealingStream(source.fileno(), start, length, identities)


def generate_identity() -> tuple[str, str]:
    """A new key pair: ``(identity, recipient)``, the private and public strings."""
    identity = x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def write_identity(directory: Path, identity: str, recipient: str) -> Path:
    """Store a private key as ``<key id>.age.key`` (mode 0600) in the age CLI's identity-file
    form, so ``age -d -i`` reads it as it is."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key_id_of(recipient)}{IDENTITY_SUFFIX}"
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = f"# created: {created}\n# public key: {recipient}\n{identity}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def write_recipient(directory: Path, recipient: str) -> Path:
    """Store a public key as ``<key id>.age.pub``, the name a recipients directory expects."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key_id_of(recipient)}{RECIPIENT_SUFFIX}"
    path.write_text(f"{recipient}\n")
    return path
