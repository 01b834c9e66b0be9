"""Ed25519 signing of export files, and the keyring the Request Network verifies with.

The signature covers the SHA-256 digest of every byte before the trailer line, prefixed with a
domain tag, so a reader can verify a file of any size in one streaming pass and a signature made
for another purpose can never be replayed as an export signature. The Request Network holds only
public keys, each identified by a key id derived from the key itself: a file names the key it was
signed with, and rotating keys means trusting the new public key before the Response Network starts
signing with it (see ``docs/exchange-format.md``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

log = logging.getLogger(__name__)

SIGNATURE_ALG = "ed25519-sha256"
#: A PEM public key is ~113 bytes; a key file larger than this is not one.
MAX_KEY_FILE_BYTES = 16 * 1024
_DOMAIN = b"netsync-export-v1\n"


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """A short, stable identifier of a public key: the first 16 hex digits of its SHA-256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _message(digest: bytes) -> bytes:
    return _DOMAIN + digest


@dataclass(frozen=True)
class Signer:
    """The Response Network's current private key."""

    private_key: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id_for(self.private_key.public_key())

    def sign(self, digest: bytes) -> bytes:
        return self.private_key.sign(_message(digest))

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> Signer:
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the signing key is not an Ed25519 private key")
        return cls(key)

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """Load a public key from PEM or from the base64 of its 32 raw bytes."""
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"unsupported key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


class Keyring:
    """The public keys the Request Network trusts, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {key_id_for(k): k for k in keys}

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def verify(self, key_id: str, digest: bytes, signature: bytes) -> bool:
        """True when ``key_id`` is trusted and ``signature`` is its signature of ``digest``."""
        key = self._keys.get(key_id)
        if key is None:
            return False
        try:
            key.verify(signature, _message(digest))
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_sources(cls, directory: Path | None, inline: Iterable[str] = ()) -> Keyring:
        """Trust every ``*.pub`` file of ``directory`` plus inline base64 or PEM keys.

        A key that does not load (junk, a FIFO, too large, unreadable) is logged and skipped,
        at start-up as on every reload: one bad file never takes the other keys down with it.
        Links are followed here (Kubernetes mounts keys as links): the directory is the
        operator's, not the exports directory.
        """
        keys = []
        for item in inline:
            if not item.strip():
                continue
            try:
                keys.append(load_public_key(item.encode()))
            except ValueError as exc:
                log.error("ignoring an inline trusted key", extra={"error": str(exc)[:200]})
        if directory is not None and directory.is_dir():
            for path in sorted(directory.glob("*.pub")):
                try:
                    keys.append(load_public_key(_read_key_file(path)))
                except (OSError, ValueError) as exc:
                    log.error(
                        "ignoring a trusted key file",
                        extra={"file": path.name, "error": str(exc)[:200]},
                    )
        return cls(keys)

    @classmethod
    def of(cls, mapping: Mapping[str, Ed25519PublicKey]) -> Keyring:
        return cls(mapping.values())


def _read_key_file(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"not a regular file ({stat.filemode(st.st_mode)})")
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def write_key_pair(signer: Signer, private_path: Path, public_dir: Path) -> Path:
    """Store a private key (mode 0600) and its public half as ``<key id>.pub``."""
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(signer.private_pem())
    public_path = public_dir / f"{signer.key_id}.pub"
    public_path.write_bytes(signer.public_pem())
    return public_path
