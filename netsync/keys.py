"""Loading the signing key, the trusted public keys and the sealing keys, with generated keys
in development.

In development ``./run up`` needs no key management: the first process that needs keys generates
them under ``<state>/keys``: the signing key (mode 0600) with its public half trusted in
``<state>/keys/trusted``, and the Request side's sealing key pair, its private half in
``<state>/keys/decryption`` (mode 0600) and its public half in ``<state>/keys/recipients``.
Outside development a missing key is a start-up error.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from exchange.sealing import (
    RECIPIENT_SUFFIX,
    KeyFileError,
    Recipients,
    generate_identity,
    write_identity,
    write_recipient,
)
from exchange.signing import Signer, write_key_pair
from netsync.config import ConfigurationError


def trusted_dir(state_dir: Path) -> Path:
    return state_dir / "keys" / "trusted"


def decryption_dir(state_dir: Path) -> Path:
    return state_dir / "keys" / "decryption"


def recipients_dir(state_dir: Path) -> Path:
    return state_dir / "keys" / "recipients"


def ensure_dev_sealing_pair(state_dir: Path) -> None:
    """Generate the development sealing key pair once (under the same lock as the signing key)."""
    if any(recipients_dir(state_dir).glob(f"*{RECIPIENT_SUFFIX}")):
        return
    identity, recipient = generate_identity()
    write_identity(decryption_dir(state_dir), identity, recipient)
    write_recipient(recipients_dir(state_dir), recipient)


def ensure_dev_key_pair(private_path: Path, state_dir: Path) -> None:
    """Generate the development key pair once, even when several processes start together."""
    private_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = private_path.parent / ".keygen.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not private_path.exists():
            write_key_pair(Signer.generate(), private_path, trusted_dir(state_dir))
        ensure_dev_sealing_pair(state_dir)


def load_signer(path: Path, *, state_dir: Path, development: bool) -> Signer:
    if not path.exists():
        if not development:
            raise ConfigurationError(f"signing key {path} does not exist")
        ensure_dev_key_pair(path, state_dir)
    return Signer.from_pem(path.read_bytes())


def load_export_keys(
    signing_key: Path,
    recipients: Path | None,
    inline: list[str],
    *,
    state_dir: Path,
    development: bool,
) -> tuple[Signer, Recipients]:
    """What a worker publishes with: the signing key and the recipients it seals to."""
    signer = load_signer(signing_key, state_dir=state_dir, development=development)
    return signer, load_recipients(recipients, inline, state_dir=state_dir, development=development)


def load_recipients(
    directory: Path | None, inline: list[str], *, state_dir: Path, development: bool
) -> Recipients:
    """The recipients export files are sealed to; none is a start-up error outside development
    (where the development pair is generated on first use)."""
    if development and directory == recipients_dir(state_dir):
        ensure_dev_sealing_pair(state_dir)
    try:
        recipients = Recipients.from_sources(directory, inline)
    except KeyFileError as exc:
        raise ConfigurationError(f"NETSYNC_EXPORT_RECIPIENTS: {exc}") from exc
    if not recipients:
        raise ConfigurationError(
            "no recipients to seal export files to: put the Request Network's public keys "
            "(<key id>.age.pub, from `netsync keys generate --encryption`) in "
            "NETSYNC_EXPORT_RECIPIENTS_DIR, or list them in NETSYNC_EXPORT_RECIPIENTS"
        )
    return recipients
