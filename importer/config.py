"""Settings of the Request Network processes: the importer daemon and the Request API."""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr

from netsync.config import CommonSettings, ConfigurationError, is_placeholder
from netsync.keys import decryption_dir, trusted_dir


class RequestSettings(CommonSettings):
    request_database_url: str | None = None
    #: Directory of trusted ``*.pub`` keys; defaults to the development keys in the state dir.
    trusted_keys_dir: Path | None = None
    #: Extra trusted public keys, comma-separated (base64 of the 32 raw bytes, or PEM).
    trusted_keys: str = ""
    #: Directory of the importer's private keys (``*.age.key``, mode 0600 or 0640) that open
    #: sealed files; defaults to the development keys in the state dir.
    decryption_keys_dir: Path | None = None
    #: Apply version 1 (unsealed) files: unset, only where ``NETSYNC_ENV=development``. Set
    #: ``true`` elsewhere only for the upgrade, while files of the previous version are in flight.
    accept_plaintext: bool | None = None
    #: The importer's own files (archive, quarantine, spool): on the Request side, outside the
    #: exports directory, which anyone who can write there could otherwise plant things in.
    importer_state_dir: Path | None = None
    archive_dir: Path | None = None
    quarantine_dir: Path | None = None
    #: Size limits per kind of stream, checked before a byte is read. ``changes`` files are
    #: capped at 4 MiB by their writer (``NETSYNC_EXPORT_MAX_FILE_BYTES``) ...
    max_file_bytes: int = 16 * 1024 * 1024
    #: ... a ``results`` file holds at most a few hundred job summaries ...
    max_results_bytes: int = 8 * 1024 * 1024
    #: ... and a snapshot holds a whole entity type (a million settings are ~280 MB).
    max_snapshot_bytes: int = 2 * 1024 * 1024 * 1024
    #: Of a refused file that was never verified, the quarantine keeps the first bytes for
    #: forensics, no more than this, while all it holds stays under ``quarantine_max_bytes``
    #: (a genuine file refused for its content is kept whole).
    quarantine_keep_bytes: int = 64 * 1024
    quarantine_max_bytes: int = 1024 * 1024 * 1024
    #: Archived files (the ledger is the record; these are for audits) are kept this long ...
    archive_retention_days: float = 7.0
    #: ... and quarantined files and sidecars (their rows stay in the database) this long.
    quarantine_retention_days: float = 30.0
    #: Per stream, the newest import ledger rows kept when the daemon prunes the ledger (older
    #: ones go once no open gap needs them: ``importer.daemon.ledger.prune``).
    ledger_keep_files: int = Field(default=100_000, ge=1000)
    #: How often the daemon prunes the archive, the quarantine and the ledger.
    prune_interval_s: float = 3600.0
    #: watchfiles tuning: the defaults (1,600/50 ms) would add ~80 ms to every change.
    watch_debounce_ms: int = 10
    watch_step_ms: int = 1
    #: Poll the directory instead of relying on inotify (NFS, Docker Desktop bind mounts).
    force_polling: bool = False
    #: Events can be lost (queue overflow, network file systems): rescan this often regardless.
    rescan_interval_s: float = 2.0
    #: The importer's /metrics, /health and /ready port; 0 disables. One per daemon on a host.
    importer_metrics_port: int = 9101
    #: Watch for file events at all; off, only the periodic rescan finds files.
    watch_files: bool = True
    #: A burst is applied many files per transaction: up to this many files ...
    batch_max_files: int = 200
    #: ... or this many records, ...
    batch_max_records: int = 5000
    #: ... or this many bytes of files, whichever comes first: the read-ahead's memory bound.
    batch_max_bytes: int = 32 * 1024 * 1024
    #: A sequence gap open longer than this is logged as a warning (and repeated as often).
    gap_alert_after_s: float = 60.0
    #: Signs the Request API's bearer tokens; a random one in the state dir in development.
    request_secret_key: SecretStr | None = None
    #: Optional static bearer token for machines reading the Request API.
    request_service_token: SecretStr | None = None
    #: Lifetime of a bearer token issued by the Request API's login.
    request_token_minutes: int = 15

    @cached_property
    def database_url(self) -> str:
        if self.request_database_url:
            return self.request_database_url
        raise ConfigurationError(
            "NETSYNC_REQUEST_DATABASE_URL is not set (./run up starts embedded servers)"
        )

    @property
    def importer_state_path(self) -> Path:
        return self.importer_state_dir or self.state_dir / "importer"

    @property
    def archive_path(self) -> Path:
        return self.archive_dir or self.importer_state_path / "archive"

    @property
    def quarantine_path(self) -> Path:
        return self.quarantine_dir or self.importer_state_path / "quarantine"

    @property
    def spool_path(self) -> Path:
        """Private copies of large files while they are verified and applied."""
        return self.importer_state_path / "spool"

    def max_bytes_for(self, kind: str) -> int:
        """The size limit of a kind of stream (``exchange.format.kind_of_stream``)."""
        if kind == "snapshot":
            return self.max_snapshot_bytes
        if kind == "results":
            return self.max_results_bytes
        return self.max_file_bytes

    @property
    def trusted_keys_path(self) -> Path | None:
        if self.trusted_keys_dir is not None:
            return self.trusted_keys_dir
        return trusted_dir(self.state_dir) if self.is_development else None

    @property
    def decryption_keys_path(self) -> Path | None:
        if self.decryption_keys_dir is not None:
            return self.decryption_keys_dir
        return decryption_dir(self.state_dir) if self.is_development else None

    @property
    def accepts_plaintext(self) -> bool:
        if self.accept_plaintext is not None:
            return self.accept_plaintext
        return self.env == "development"  # not in production, nor in tests of production paths

    @property
    def trusted_keys_list(self) -> list[str]:
        return [k.strip() for k in self.trusted_keys.split(",") if k.strip()]

    def token_secret(self) -> str:
        """The token signing secret; refused outside development if missing or a placeholder."""
        self.require("request_secret_key", self.request_secret_key, min_length=32)
        if self.request_secret_key is not None and self.request_secret_key.get_secret_value():
            return self.request_secret_key.get_secret_value()
        path = self.state_dir / "request_secret_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return path.read_text().strip()
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        return path.read_text().strip()

    def service_token(self) -> str | None:
        """The static service token, if one is configured (placeholders refused)."""
        token = self.request_service_token
        if token is None or not token.get_secret_value():
            return None
        if is_placeholder(token, min_length=32):
            raise ConfigurationError(
                "NETSYNC_REQUEST_SERVICE_TOKEN must be a real value of at least 32 characters"
            )
        return token.get_secret_value()
