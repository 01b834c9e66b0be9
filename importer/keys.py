"""The trusted public keys, re-read while the daemon runs: key rotation needs no restart.

Operators rotate by dropping the new ``<key id>.pub`` into the trusted keys directory before the
Response Network signs with it (``docs/key-rotation.md``). Looking at a handful of ``stat``
results costs microseconds, so every scan checks whether the directory changed, and so does a
file that names a key we do not know (the key may have landed a moment after it); SIGHUP forces a
reload. A key file that does not load is logged and skipped: the other keys stay trusted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from exchange.signing import Keyring

log = logging.getLogger(__name__)

_Fingerprint = tuple[tuple[str, int, int, int], ...]


def _fingerprint(directory: Path | None) -> _Fingerprint:
    if directory is None:
        return ()
    entries: list[tuple[str, int, int, int]] = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if not entry.name.endswith(".pub"):
                    continue
                try:
                    st = entry.stat()  # follows symlinks: Kubernetes mounts keys as links
                except OSError:
                    continue
                entries.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_size))
    except OSError:
        return ()
    return tuple(sorted(entries))


class TrustedKeys:
    """A ``Keyring`` that follows its sources: inline keys plus the ``*.pub`` files of a dir."""

    def __init__(
        self, directory: Path | None, inline: list[str], initial: Keyring | None = None
    ) -> None:
        self.directory = directory
        self.inline = inline
        self._seen = _fingerprint(directory)
        self._forced = False
        self.keyring = initial if initial is not None else self._load()

    def _load(self) -> Keyring:
        return Keyring.from_sources(self.directory, self.inline)

    def request_reload(self) -> None:
        """Reload on the next ``refresh()`` even if nothing seems to have changed (SIGHUP)."""
        self._forced = True

    def refresh(self) -> bool:
        """Re-read the keys if their directory changed; True when the trusted set changed."""
        seen = _fingerprint(self.directory)
        if seen == self._seen and not self._forced:
            return False
        self._seen, self._forced = seen, False
        before = set(self.keyring.key_ids)
        self.keyring = self._load()
        after = set(self.keyring.key_ids)
        if before == after:
            return False
        log.info(
            "trusted keys reloaded",
            extra={
                "key_ids": sorted(after),
                "added": sorted(after - before),
                "removed": sorted(before - after),
            },
        )
        return True
