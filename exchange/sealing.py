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
through a child process, so that encryption runs on the other core while this process reads the
database (``pyrage`` holds the GIL while it encrypts). Unsealing happens in the importer, after
the signature held, into memory or the importer's own spool.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import pyrage
from pyrage import x25519

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


def _decrypt_error(exc: Exception) -> SealError:
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


@dataclass(frozen=True)
class Recipients:
    """The public keys every export file is sealed to (the Response side's view)."""

    keys: tuple[str, ...] = ()
    _parsed: tuple[Any, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def of(cls, recipients: Iterable[str]) -> Recipients:
        """Parse ``age1…`` strings into their canonical form (bech32 is case-insensitive: the
        key id is taken of the form the importer computes), duplicates dropped; ``KeyFileError``
        for one that is not a recipient (the input is never echoed: it may be a private key)."""
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
        if len(canonical) > MAX_RECIPIENTS:
            raise KeyFileError(f"{len(canonical)} recipients: at most {MAX_RECIPIENTS}")
        keys = sorted(canonical)
        return cls(tuple(keys), tuple(canonical[k] for k in keys))

    @classmethod
    def from_sources(cls, directory: Path | None, inline: Iterable[str] = ()) -> Recipients:
        """Every ``*.age.pub`` of ``directory`` plus inline recipients. A file that does not
        load is logged and skipped (the others still seal), like the trusted keys."""
        found = [item for item in inline if item.strip()]
        if directory is not None and directory.is_dir():
            for path in sorted(directory.glob(f"*{RECIPIENT_SUFFIX}")):
                try:
                    lines = _key_lines(read_key_file(path, private=False))
                    cls.of(lines)
                except KeyFileError as exc:
                    log.error("ignoring a recipient file", extra={"error": str(exc)[:300]})
                    continue
                found.extend(lines)
        return cls.of(found)

    @property
    def key_ids(self) -> list[str]:
        return sorted(key_id_of(r) for r in self.keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt a body held in memory (a ``changes`` or ``results`` file)."""
        return bytes(pyrage.encrypt(plaintext, list(self._parsed)))

    def stream(self, sink: Callable[[bytes], None]) -> SealingStream:
        """Encrypt a body written piecewise; ciphertext goes to ``sink`` as it is made."""
        return SealingStream(self.keys, sink)


#: The child that encrypts a stream: plaintext on stdin, ciphertext on stdout, recipients (public
#: keys, nothing secret) as arguments. It needs pyrage and nothing of netsync.
_CHILD = (
    "import sys, pyrage\n"
    "from pyrage import x25519\n"
    "keys = [x25519.Recipient.from_str(r) for r in sys.argv[1:]]\n"
    "pyrage.encrypt_io(sys.stdin.buffer, sys.stdout.buffer, keys)\n"
    "sys.stdout.buffer.flush()\n"
)
_PIPE_BLOCK = 1 << 20


class SealingStream:
    """A streaming age encryption in a child process, on the other core.

    ``write`` hands plaintext to the child (blocking while its pipe is full, so memory stays
    bounded); a thread hands the child's ciphertext to ``sink``. ``close`` ends the stream and
    raises if anything failed on the way; ``abort`` kills the child.
    """

    def __init__(self, recipients: Iterable[str], sink: Callable[[bytes], None]) -> None:
        self._sink = sink
        self._error: BaseException | None = None
        self._proc = subprocess.Popen(  # noqa: S603 - our interpreter, our code, public keys
            [sys.executable, "-I", "-c", _CHILD, *recipients],  # -I: no cwd, no PYTHONPATH
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
        self._thread = threading.Thread(target=self._drain, name="seal-drain", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        out = self._proc.stdout
        assert out is not None
        try:
            while chunk := out.read(_PIPE_BLOCK):
                self._sink(chunk)
        except BaseException as exc:  # a full disk: stop the child, tell the writer
            self._error = exc
            self._proc.kill()

    def _failed(self) -> BaseException:
        if self._error is not None:
            return self._error
        stderr = self._proc.stderr.read()[-400:] if self._proc.stderr else b""
        return OSError(f"the sealing process failed: {stderr.decode(errors='replace').strip()}")

    def write(self, data: bytes) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(data)
        except (BrokenPipeError, ValueError) as exc:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._thread.join()
            failure = self._failed()  # the child's stderr, read before the pipes close
            self._close_pipes()
            raise failure from exc

    def close(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError):
            stdin.close()
        self._thread.join()
        code = self._proc.wait()
        if self._error is not None or code != 0:
            failure = self._failed()
            self._close_pipes()
            raise failure
        self._close_pipes()

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


#: The child that decrypts a large body: the private keys on stdin (never in argv or the
#: environment), the ciphertext read with ``pread`` from an inherited descriptor (the importer's
#: private, verified copy), the plaintext on stdout. Errors: rage's message on stderr, exit 3.
_UNSEAL_CHILD = (
    "import os, sys, pyrage\n"
    "from pyrage import x25519\n"
    "keys = [x25519.Identity.from_str(s) for s in sys.stdin.read().split()]\n"
    "fd, offset, length = (int(a) for a in sys.argv[1:4])\n"
    "class Source:\n"
    "    def __init__(self):\n"
    "        self.at, self.end = offset, offset + length\n"
    "    def read(self, size=-1):\n"
    "        want = self.end - self.at if size is None or size < 0 else size\n"
    "        data = os.pread(fd, max(0, min(want, self.end - self.at)), self.at)\n"
    "        self.at += len(data)\n"
    "        return data\n"
    "try:\n"
    "    pyrage.decrypt_io(Source(), sys.stdout.buffer, keys)\n"
    "    sys.stdout.buffer.flush()\n"
    "except pyrage.DecryptError as exc:\n"
    "    sys.stderr.write(str(exc)[:400])\n"
    "    sys.exit(3)\n"
)


class UnsealingStream:
    """A large body decrypted by a child process on the other core while this process parses
    and copies what it already gave. ``rage`` authenticates each 64 KiB chunk before it hands it
    out; a body cut short or altered is found when the stream ends (``read`` or ``readline``
    returning nothing raises ``SealError``), before whoever reads it commits anything."""

    def __init__(self, fd: int, offset: int, length: int, identities: list[Any]) -> None:
        self._proc = subprocess.Popen(  # noqa: S603 - our interpreter, our code; no secret in argv
            [sys.executable, "-I", "-c", _UNSEAL_CHILD, str(fd), str(offset), str(length)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(fd,),
        )
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._out = self._proc.stdout
        try:
            self._proc.stdin.write("\n".join(str(i) for i in identities).encode())
            self._proc.stdin.close()
        except BrokenPipeError:
            pass  # the child died at once: its exit status says why, at the end
        self._done = False

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        code = self._proc.wait()
        if code != 0:
            assert self._proc.stderr is not None
            message = self._proc.stderr.read(400).decode(errors="replace")
            raise _decrypt_error(Exception(message or f"the unsealing process exited {code}"))

    def read(self, size: int | None = -1) -> bytes:
        data = self._out.read(-1 if size is None else size)
        if not data:
            self._finish()
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data = self._out.readline(-1 if size is None else size)
        if not data:
            self._finish()
        return data

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


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

    def unseal(self, ciphertext: bytes, key_ids: Iterable[str]) -> bytes:
        wanted = list(key_ids)
        identities = self._for(wanted)
        check_header(ciphertext[:MAX_AGE_HEADER_BYTES], len(wanted))
        try:
            return bytes(pyrage.decrypt(ciphertext, identities))
        except pyrage.DecryptError as exc:
            raise _decrypt_error(exc) from exc

    def unseal_streaming(
        self, source: BinaryIO, length: int, key_ids: Iterable[str]
    ) -> UnsealingStream:
        """Decrypt ``length`` bytes of ``source`` (a real file, from where it stands) in a
        child process, handing the plaintext out as it comes."""
        wanted = list(key_ids)
        identities = self._for(wanted)
        start = source.tell()
        check_header(source.read(min(length, MAX_AGE_HEADER_BYTES)), len(wanted))
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
