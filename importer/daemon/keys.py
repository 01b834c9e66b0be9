"""The trusted public keys and the decryption keys, re-read while the daemon runs: rotating
either needs no restart.

Operators rotate by dropping the new ``<key id>.pub`` into the trusted keys directory before the
Response Network signs with it, and the new ``<key id>.age.key`` into the decryption keys
directory before the Response Network seals to it (``docs/key-rotation.md``). Looking at a
handful of ``stat`` results costs microseconds, so every scan checks whether the directories
changed, and so does a file that names a key we do not know (the key may have landed a moment
after it); SIGHUP forces a
reload. A key file that does not load is logged and skipped: the other keys stay trusted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from exchange.sealing import IDENTITY_SUFFIX, Identities
from exchange.signing import Keyring
from importer.config import RequestSettings
from netsync.config import ConfigurationError
from netsync.keys import decryption_dir, ensure_dev_sealing_pair

log = logging.getLogger(__name__)

_Fingerprint = tuple[tuple[str, int, int, int, int, int], ...]


def _fingerprint(directory: Path | None, suffix: str = ".pub") -> _Fingerprint:
    if directory is None:
        return ()
    entries: list[tuple[str, int, int, int, int, int]] = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if not entry.name.endswith(suffix):
                    continue
                try:
                    st = entry.stat()  # follows symlinks: Kubernetes mounts keys as links
                except OSError:
                    continue
                # the mode and ctime too: a key fixed with chmod must be looked at again
                entries.append(
                    (entry.name, st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_ctime_ns)
                )
    except OSError:
        return ()
    return tuple(sorted(entries))


def load_identities(settings: RequestSettings) -> Identities:
    """The private keys that open sealed files, strictly: a private key others may read, or
    one that does not load, stops the importer before it starts. None at all is allowed only
    where unsealed files are (development, or the upgrade): otherwise nothing could be read."""
    directory = settings.decryption_keys_path
    if settings.is_development and directory == decryption_dir(settings.state_dir):
        ensure_dev_sealing_pair(settings.state_dir)
    identities = Identities.from_directory(directory, strict=True)
    if settings.accepts_plaintext and settings.env != "development":
        log.warning(
            "unsealed (version 1) files are accepted: NETSYNC_ACCEPT_PLAINTEXT is for the upgrade"
            " only; unset it once no file of the previous version is in flight"
        )
    if identities:
        log.info("decryption keys loaded", extra={"key_ids": identities.key_ids})
    elif not settings.accepts_plaintext:
        raise ConfigurationError(
            "no decryption keys: put this importer's private key (<key id>.age.key, from "
            "`netsync keys generate --encryption`) in NETSYNC_DECRYPTION_KEYS_DIR"
        )
    return identities


class TrustedKeys:
    """A ``Keyring`` that follows its sources (inline keys plus the ``*.pub`` files of a dir),
    and the ``Identities`` of a decryption keys directory."""

    def __init__(
        self,
        directory: Path | None,
        inline: list[str],
        initial: Keyring | None = None,
        *,
        identities_dir: Path | None = None,
        identities: Identities | None = None,
    ) -> None:
        self.directory = directory
        self.inline = inline
        self.identities_dir = identities_dir
        self._seen = self._look()
        self._forced = False
        self.keyring = initial if initial is not None else self._load()
        self.identities = (
            identities
            if identities is not None
            else Identities.from_directory(identities_dir, strict=False)
        )

    def _look(self) -> tuple[_Fingerprint, _Fingerprint]:
        return _fingerprint(self.directory), _fingerprint(self.identities_dir, IDENTITY_SUFFIX)

    def _load(self) -> Keyring:
        return Keyring.from_sources(self.directory, self.inline)

    def request_reload(self) -> None:
        """Reload on the next ``refresh()`` even if nothing seems to have changed (SIGHUP)."""
        self._forced = True

    def refresh(self) -> bool:
        """Re-read the keys if their directories changed; True when a set of keys changed."""
        seen = self._look()
        if seen == self._seen and not self._forced:
            return False
        self._seen, self._forced = seen, False
        before = set(self.keyring.key_ids)
        self.keyring = self._load()
        changed = _changed("trusted keys reloaded", before, set(self.keyring.key_ids))
        before = set(self.identities.key_ids)
        loaded = Identities.from_directory(self.identities_dir, strict=False)
        if not loaded and self.identities:
            # an unreadable or emptied directory (a remount, a botched copy) would quarantine
            # every file from now on: keep the keys that worked, and say so
            log.error(
                "no decryption key loads any more; keeping the previous ones",
                extra={"dir": str(self.identities_dir), "key_ids": self.identities.key_ids},
            )
            return changed
        self.identities = loaded
        return _changed("decryption keys reloaded", before, set(loaded.key_ids)) or changed


def _changed(message: str, before: set[str], after: set[str]) -> bool:
    if before == after:
        return False
    log.info(
        message,
        extra={
            "key_ids": sorted(after),
            "added": sorted(after - before),
            "removed": sorted(before - after),
        },
    )
    return True
