"""Loading the signing key and the trusted public keys, with generated keys in development.

In development ``./run up`` needs no key management: the first process that needs a key pair
generates one under ``<state>/keys`` (private key mode 0600) and trusts its public half in
``<state>/keys/trusted``. Outside development a missing key is a start-up error.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from exchange.signing import Signer, write_key_pair
from netsync.config import ConfigurationError


def trusted_dir(state_dir: Path) -> Path:
    return state_dir / "keys" / "trusted"


def ensure_dev_key_pair(private_path: Path, state_dir: Path) -> None:
    """Generate the development key pair once, even when several processes start together."""
    private_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = private_path.parent / ".keygen.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not private_path.exists():
            write_key_pair(Signer.generate(), private_path, trusted_dir(state_dir))


def load_signer(path: Path, *, state_dir: Path, development: bool) -> Signer:
    if not path.exists():
        if not development:
            raise ConfigurationError(f"signing key {path} does not exist")
        ensure_dev_key_pair(path, state_dir)
    return Signer.from_pem(path.read_bytes())
