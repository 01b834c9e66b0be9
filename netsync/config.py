"""Settings shared by every process: environment, state directory, exports directory, logging.

Each process has its own settings class built on this one (``app.config``, ``importer.config``),
all read from ``NETSYNC_*`` environment variables. In development, anything left unset falls back
to the embedded servers and generated keys under the state directory, which ``./run up`` and the
test suite create. Outside development every secret and URL must be given, and placeholders are
refused at start-up rather than discovered in production.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "test", "production"]

PLACEHOLDERS = frozenset(
    {"", "changeme", "change-me", "change_me", "secret", "password", "placeholder", "todo", "xxx"}
)


class ConfigurationError(RuntimeError):
    """The process cannot start with this configuration; the message says what to set."""


def is_placeholder(value: SecretStr | str | None, *, min_length: int = 1) -> bool:
    if value is None:
        return True
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    return raw.strip().lower() in PLACEHOLDERS or len(raw) < min_length


def to_asyncpg_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs as users write them; SQLAlchemy needs the driver.

    libpq's multi-host form (``postgresql://u@h1:5432,h2:5432/db?target_session_attrs=
    read-write``: a primary and its standbys, the client connecting to whichever takes writes)
    becomes the form SQLAlchemy's asyncpg dialect reads, one ``host=h:p`` per host in the query.
    """
    libpq = to_libpq_url(url)
    parts = urlsplit(libpq)
    credentials, at, hosts = parts.netloc.rpartition("@")
    if "," in hosts:
        query = "&".join(
            [*(f"host={h if ':' in h else h + ':5432'}" for h in hosts.split(",") if h)]
            + ([parts.query] if parts.query else [])
        )
        parts = parts._replace(netloc=credentials + at, query=query)
    return "postgresql+asyncpg://" + urlunsplit(parts).removeprefix("postgresql://")


def to_libpq_url(url: str) -> str:
    """The URL as libpq, ``asyncpg.connect`` and ``psql`` take it (multi-host form kept)."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    raise ConfigurationError(f"not a PostgreSQL URL: {url.split('@')[-1]}")


def with_database(url: str, database: str) -> str:
    """``url`` naming another database on the same server (tests and benchmarks create their own).

    Only the path changes: the query, where a Unix socket's ``host`` lives, is kept as it is.
    """
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


class CommonSettings(BaseSettings):
    # ``./run up`` writes the embedded servers' URLs to ``<state dir>/embedded.env`` so that
    # processes and the CLI started by hand in development find them (``__init__``); real
    # environment variables always take precedence.
    model_config = SettingsConfigDict(env_prefix="NETSYNC_", extra="ignore")

    def __init__(self, **values: Any) -> None:
        if "_env_file" not in values:
            state = values.get("state_dir") or os.environ.get("NETSYNC_STATE_DIR") or ".netsync"
            values["_env_file"] = Path(state) / "embedded.env"
        super().__init__(**values)

    env: Environment = "development"
    state_dir: Path = Path(".netsync")
    exports_dir: Path | None = None
    log_level: str = "INFO"
    log_format: Literal["json", "console"] | None = None
    #: Where the daemons (worker, importer) serve /metrics, /health and /ready.
    metrics_host: str = "127.0.0.1"
    #: Sign-in throttling (``netsync.throttle``), in ``limits``' notation: attempts per account
    #: (the name as typed, lowercased) and failed attempts per client address, every tier.
    sign_in_account_limits: str = "10/15 minutes; 30/day"
    sign_in_address_limits: str = "100/15 minutes"
    #: Keeps the counters of installations sharing one Redis database apart.
    sign_in_namespace: str = ""
    #: Once started, move what the process built out of the collector's full passes
    #: (``netsync.heap``). Off where one process hosts many short-lived apps (a test run),
    #: which would otherwise keep whatever the first one left behind.
    gc_freeze: bool = True

    @model_validator(mode="after")
    def _defaults(self) -> CommonSettings:
        if self.exports_dir is None:
            self.exports_dir = self.state_dir / "exports"
        if self.log_format is None:
            self.log_format = "console" if self.env == "development" else "json"
        return self

    @property
    def is_development(self) -> bool:
        return self.env != "production"

    @property
    def exports_path(self) -> Path:
        assert self.exports_dir is not None
        return self.exports_dir

    def require(self, name: str, value: SecretStr | str | None, *, min_length: int = 1) -> None:
        """Refuse to start outside development with a missing or placeholder value."""
        if not self.is_development and is_placeholder(value, min_length=min_length):
            raise ConfigurationError(
                f"NETSYNC_{name.upper()} must be set to a real value outside development"
                + (f" (at least {min_length} characters)" if min_length > 1 else "")
            )
