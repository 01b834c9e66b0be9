"""Outside development, processes refuse to start with missing or placeholder secrets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.bootstrap import ensure_admin
from app.config import ResponseSettings
from netsync.config import ConfigurationError, to_libpq_url, with_database
from tests.support import Sandbox


def production(**values: object) -> ResponseSettings:
    base: dict[str, object] = {
        "env": "production",
        "response_database_url": "postgresql://u@db/response",
        "redis_url": "redis://redis:6379/0",
        "secret_key": "s" * 48,
    }
    return ResponseSettings(_env_file=None, **{**base, **values})  # type: ignore[arg-type]


@pytest.mark.parametrize("secret", [None, "", "changeme", "secret", "too-short-for-a-key"])
def test_the_api_refuses_placeholder_token_secrets_in_production(secret: str | None) -> None:
    with pytest.raises(ConfigurationError, match="NETSYNC_SECRET_KEY"):
        production(secret_key=secret).check()


def test_production_needs_real_urls_and_a_signing_key() -> None:
    production().check()  # a complete configuration starts
    with pytest.raises(ConfigurationError, match="NETSYNC_RESPONSE_DATABASE_URL"):
        production(response_database_url=None).check()
    with pytest.raises(ConfigurationError, match="NETSYNC_REDIS_URL"):
        production(redis_url=None).check()
    with pytest.raises(ConfigurationError, match="NETSYNC_SIGNING_KEY_FILE"):
        _ = production().signing_key_path


def test_development_generates_a_token_secret_once(tmp_path: Path) -> None:
    settings = ResponseSettings(_env_file=None, state_dir=tmp_path)
    first = settings.jwt_secret()
    assert len(first) >= 32
    assert ResponseSettings(_env_file=None, state_dir=tmp_path).jwt_secret() == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


async def test_the_admin_is_not_created_with_a_missing_or_weak_password_in_production(
    sandbox: Sandbox,
) -> None:
    settings = sandbox.response_settings(env="production")
    with pytest.raises(ConfigurationError, match="NETSYNC_ADMIN_PASSWORD"):
        await ensure_admin(settings)
    with pytest.raises(ConfigurationError, match="NETSYNC_ADMIN_PASSWORD"):
        await ensure_admin(settings.model_copy(update={"admin_password": SecretStr("changeme")}))


async def test_development_generates_the_admin_password_and_keeps_it_private(
    sandbox: Sandbox,
) -> None:
    settings = sandbox.response_settings(env="development")
    generated = await ensure_admin(settings)
    assert generated is not None
    assert len(generated) >= 20
    stored = settings.state_dir / "admin-password"
    assert stored.read_text().strip() == generated
    assert stored.stat().st_mode & 0o077 == 0
    assert await ensure_admin(settings) is None  # printed once: the second start creates nothing


@pytest.mark.parametrize(
    ("admin", "expected"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/postgres",
            "postgresql://postgres@127.0.0.1:5432/nst_x",
        ),
        (
            "postgresql://postgres@/postgres?host=/tmp/nst-1/pg&port=5432",
            "postgresql://postgres@/nst_x?host=/tmp/nst-1/pg&port=5432",
        ),
        (
            "postgresql+asyncpg://u:p@db/response?ssl=require",
            "postgresql+asyncpg://u:p@db/nst_x?ssl=require",
        ),
    ],
)
def test_a_scratch_database_url_keeps_the_server_and_its_socket(admin: str, expected: str) -> None:
    assert with_database(admin, "nst_x") == expected


def test_asyncpg_connect_gets_the_url_without_the_driver_part() -> None:
    assert to_libpq_url("postgresql+asyncpg://u@h/d") == "postgresql://u@h/d"
    assert to_libpq_url("postgres://u@h/d") == "postgresql://u@h/d"
    with pytest.raises(ConfigurationError):
        to_libpq_url("mysql://u@h/d")


def test_settings_read_the_embedded_servers_file_of_the_state_dir_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second terminal finds ``./run up``'s servers whatever ``NETSYNC_STATE_DIR`` is."""
    state = tmp_path / "elsewhere"
    state.mkdir()
    url = "postgresql+asyncpg://netsync@127.0.0.1:55432/netsync_response"
    (state / "embedded.env").write_text(f"NETSYNC_RESPONSE_DATABASE_URL={url}\n")
    monkeypatch.chdir(tmp_path)  # no .netsync/ here
    monkeypatch.delenv("NETSYNC_RESPONSE_DATABASE_URL", raising=False)
    monkeypatch.setenv("NETSYNC_STATE_DIR", str(state))
    assert ResponseSettings().database_url == url
    monkeypatch.setenv("NETSYNC_RESPONSE_DATABASE_URL", "postgresql://x@db/y")
    assert ResponseSettings().database_url == "postgresql://x@db/y"  # the environment wins


def test_a_weak_admin_password_is_refused_in_one_line(sandbox: Sandbox) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.bootstrap"],
        env=sandbox.env(NETSYNC_ADMIN_PASSWORD="the admin password 1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "netsync: NETSYNC_ADMIN_PASSWORD is refused: the password must not contain the username"
    ]
