"""Settings of the Response Network processes: the API and the arq worker."""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import SecretStr, field_validator

from netsync.config import CommonSettings, ConfigurationError
from netsync.keys import recipients_dir
from netsync.redis_conn import RedisURLError, is_sentinel, parse_sentinel


class ResponseSettings(CommonSettings):
    response_database_url: str | None = None
    redis_url: str | None = None
    secret_key: SecretStr | None = None
    signing_key_file: Path | None = None
    #: Directory of the Request Network's public keys (``*.age.pub``) every export file is
    #: sealed to; defaults to the development pair in the state dir.
    export_recipients_dir: Path | None = None
    #: More recipients, comma-separated ``age1…`` strings.
    export_recipients: str = ""
    admin_password: SecretStr | None = None
    access_token_minutes: int = 60
    #: How long a finished job's state and result stay readable (arq's keep_result).
    job_result_ttl_s: int = 3600
    #: The queue of interactive sync jobs (password changes); never behind bulk exports.
    sync_queue: str = "netsync:queue:sync"
    #: The queue of bulk work (exports on demand and on schedule), served by its own workers.
    bulk_queue: str = "netsync:queue:bulk"
    #: The timezone cron schedules are evaluated in (an IANA name, e.g. ``Europe/Berlin``).
    timezone: str = "UTC"
    #: Fallback poll interval of the worker; enqueues wake it at once through Redis pub/sub.
    worker_poll_delay_s: float = 0.5
    #: How often the outbox sweeper exports whatever the per-change jobs did not.
    sweep_interval_s: int = 5
    #: Retries of a failing sync job before it is given up (the sweeper still covers it).
    job_max_tries: int = 5
    #: Largest number of outbox changes in one export file.
    export_batch_size: int = 1000
    #: ... and at most about this many bytes (the importer refuses ``changes`` files over
    #: ``NETSYNC_MAX_FILE_BYTES``, 16 MiB by default: keep this well under it).
    export_max_file_bytes: int = 4 * 1024 * 1024
    #: The worker's /metrics, /health and /ready port; 0 disables. One per replica on a host.
    worker_metrics_port: int = 9100
    #: The bulk worker's own probe port (``arq jobs.BulkWorkerSettings``); 0 disables it.
    bulk_worker_metrics_port: int = 9102
    #: The Request API's base URL (``http://request-api:8001``), for the dashboard's sync status;
    #: unset, the dashboard shows the Request Network as not configured.
    request_api_url: str | None = None
    #: The dashboard's trends: one point per this many seconds, an hour kept (0: none taken).
    trends_interval_s: float = 10.0
    #: The Request API's static service token (the same ``NETSYNC_REQUEST_SERVICE_TOKEN``).
    request_service_token: SecretStr | None = None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (use an IANA name such as UTC)") from None
        return value

    @cached_property
    def database_url(self) -> str:
        if self.response_database_url:
            return self.response_database_url
        raise ConfigurationError(
            "NETSYNC_RESPONSE_DATABASE_URL is not set (./run up starts embedded servers)"
        )

    @cached_property
    def redis_dsn(self) -> str:
        if not self.redis_url:
            raise ConfigurationError(
                "NETSYNC_REDIS_URL is not set (./run up starts embedded servers)"
            )
        if is_sentinel(self.redis_url):
            try:
                parse_sentinel(self.redis_url)
            except RedisURLError as exc:
                raise ConfigurationError(f"NETSYNC_REDIS_URL: {exc}") from None
        return self.redis_url

    @property
    def signing_key_path(self) -> Path:
        if self.signing_key_file is not None:
            return self.signing_key_file
        if self.is_development:
            return self.state_dir / "keys" / "signing.pem"
        raise ConfigurationError("NETSYNC_SIGNING_KEY_FILE must be set outside development")

    @property
    def export_recipients_path(self) -> Path | None:
        if self.export_recipients_dir is not None:
            return self.export_recipients_dir
        return recipients_dir(self.state_dir) if self.is_development else None

    @property
    def export_recipients_list(self) -> list[str]:
        return [r.strip() for r in self.export_recipients.split(",") if r.strip()]

    def jwt_secret(self) -> str:
        """The token signing secret; in development a random one kept in the state directory."""
        self.require("secret_key", self.secret_key, min_length=32)
        if self.secret_key is not None and self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value()
        path = self.state_dir / "secret_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        return path.read_text().strip()

    def check(self) -> None:
        """Fail fast on configuration that would only break later (the API never signs files,
        so the signing key is the worker's to check)."""
        _ = self.database_url, self.redis_dsn
        self.jwt_secret()
