"""Settings of the Request Network processes: the importer daemon and the Request API."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from netsync.config import CommonSettings, ConfigurationError
from netsync.keys import trusted_dir


class RequestSettings(CommonSettings):
    request_database_url: str | None = None
    #: Directory of trusted ``*.pub`` keys; defaults to the development keys in the state dir.
    trusted_keys_dir: Path | None = None
    #: Extra trusted public keys, comma-separated (base64 of the 32 raw bytes, or PEM).
    trusted_keys: str = ""
    archive_dir: Path | None = None
    quarantine_dir: Path | None = None
    #: Files larger than this are quarantined without being read.
    max_file_bytes: int = 64 * 1024 * 1024
    #: Snapshot streams are read streaming (a million settings are ~280 MB), with this limit.
    max_snapshot_bytes: int = 2 * 1024 * 1024 * 1024
    #: watchfiles tuning: the defaults (1,600/50 ms) would add ~80 ms to every change.
    watch_debounce_ms: int = 10
    watch_step_ms: int = 1
    #: Poll the directory instead of relying on inotify (NFS, Docker Desktop bind mounts).
    force_polling: bool = False
    #: Events can be lost (queue overflow, network file systems): rescan this often regardless.
    rescan_interval_s: float = 2.0
    #: The importer's /metrics, /health and /ready port; 0 disables. One per daemon on a host.
    importer_metrics_port: int = 9101

    @cached_property
    def database_url(self) -> str:
        if self.request_database_url:
            return self.request_database_url
        raise ConfigurationError(
            "NETSYNC_REQUEST_DATABASE_URL is not set (./run up starts embedded servers)"
        )

    @property
    def archive_path(self) -> Path:
        return self.archive_dir or self.exports_path / "archive"

    @property
    def quarantine_path(self) -> Path:
        return self.quarantine_dir or self.exports_path / "quarantine"

    @property
    def trusted_keys_path(self) -> Path | None:
        if self.trusted_keys_dir is not None:
            return self.trusted_keys_dir
        return trusted_dir(self.state_dir) if self.is_development else None

    @property
    def trusted_keys_list(self) -> list[str]:
        return [k.strip() for k in self.trusted_keys.split(",") if k.strip()]
