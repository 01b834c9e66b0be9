"""What the compose test drives: the docker commands, the stack it brings up (its keys, its
environment, its published ports) and an API session against it (``tests/compose/conftest.py``
holds the fixtures, ``test_compose_stack.py`` the tests)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


BUILD = ROOT / "deploy" / "images" / "build.sh"


INSTALL = "deploy/images/install-docker.sh"


#: build.sh's tags, unless the environment names others (as it does for build.sh)
IMAGES = {
    "NETSYNC_IMAGE": "netsync:local",
    "NETSYNC_PYTHON_IMAGE": "netsync-base/python:3.11-bookworm",
    "NETSYNC_PYTHON_BUILD_IMAGE": "netsync-base/python-build:3.11-bookworm",
    "NETSYNC_POSTGRES_IMAGE": "netsync-base/postgres:15-bookworm",
    "NETSYNC_REDIS_IMAGE": "netsync-base/redis:7.0-bookworm",
}


IMAGE_TARGET_BYTES = 250_000_000


MIGRATIONS = {"migrate-response", "migrate-request"}


REPLICAS = {"worker": 2, "bulk-worker": 2}


#: How soon a changed password must be usable on the Request side while every process runs.
SYNC_DEADLINE_S = 15.0


#: After a worker's death: the outbox sweeper exports what its jobs left within seconds; a job
#: it held runs again once its in-progress lock expires (longest job timeout 120 s + 10 s).
RECOVERY_DEADLINE_S = 180.0


UID = 10001  # the image's user: the private keys must be its own (docs/deploy.md)


def say(config: pytest.Config, line: str) -> None:
    """A line on the terminal, past pytest's output capture: sizes, timings, logs."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is None:
            print(f"compose: {line}", file=sys.stderr)
        else:
            reporter.write_line(f"compose: {line}")


def run(
    argv: list[str], *, timeout: float = 120, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, text=True, capture_output=True, timeout=timeout, check=False, **kwargs
    )


def docker_missing() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed"
    if run(["docker", "info"]).returncode != 0:
        return "the Docker daemon does not answer"
    if run(["docker", "compose", "version"]).returncode != 0:
        return "the docker compose plugin is not installed"
    return None


def image_size(tag: str) -> int:
    inspected = run(["docker", "image", "inspect", "--format", "{{.Size}}", tag])
    assert inspected.returncode == 0, inspected.stderr
    return int(inspected.stdout)


@dataclass
class Run:
    """What the module's run measured, reported when it ends."""

    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Stack:
    """One compose project: its own directory (.env, keys), name, volumes and networks."""

    project: str
    directory: Path
    env: dict[str, str]

    @property
    def admin_password(self) -> str:
        return self.env["NETSYNC_ADMIN_PASSWORD"]

    @property
    def service_token(self) -> str:
        return self.env["NETSYNC_REQUEST_SERVICE_TOKEN"]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        done = run(
            [
                "docker",
                "compose",
                "--file",
                str(ROOT / "compose.yaml"),
                "--project-directory",
                str(self.directory),
                "--project-name",
                self.project,
                "--env-file",
                str(self.directory / ".env"),
                *args,
            ],
            timeout=timeout,
            env=self.env,
        )
        if check:
            assert done.returncode == 0, f"docker compose {' '.join(args)}:\n{done.stderr[-4000:]}"
        return done.stdout if done.returncode == 0 else done.stdout + done.stderr

    def url(self, service: str, port: int) -> str:
        address = self.compose("port", service, str(port)).strip()
        assert address.startswith("127.0.0.1:"), address  # published on the loopback only
        return f"http://{address}"

    def containers(self) -> list[dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json").strip()
        if out.startswith("["):
            listed: list[dict[str, Any]] = json.loads(out)
            return listed
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def container_ids(self, service: str) -> list[str]:
        return self.compose("ps", "--quiet", service).split()


def write_keys(directory: Path) -> None:
    """The key pairs compose mounts (docs/deploy.md), made by ``netsync keys generate``: the
    signing key for the workers, its public half for the importer, the sealing pair (public for
    the workers, private for the importer). The private keys belong to the image's user."""
    cli = shutil.which("netsync", path=str(Path(sys.executable).parent))
    netsync = [cli] if cli else [sys.executable, "-c", "from ops.cli import main; main()"]
    keys = directory / "keys"
    for args in (
        ["--private-key", str(keys / "signing.pem"), "--public-dir", str(keys / "trusted")],
        [
            "--encryption",
            "--private-dir",
            str(keys / "decryption"),
            "--public-dir",
            str(keys / "recipients"),
        ],
    ):
        done = run([*netsync, "keys", "generate", *args])
        assert done.returncode == 0, done.stdout + done.stderr
    private = [keys / "signing.pem", *sorted((keys / "decryption").glob("*.age.key"))]
    if os.geteuid() == 0:
        for path in private:
            os.chown(path, UID, UID)
    else:  # only root hands a file to another user: a throwaway container does it
        inside = [f"/keys/{path.relative_to(keys)}" for path in private]
        done = run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                "--user",
                "0",
                "--volume",
                f"{keys}:/keys",
                os.environ.get("NETSYNC_PYTHON_IMAGE", IMAGES["NETSYNC_PYTHON_IMAGE"]),
                "chown",
                f"{UID}:{UID}",
                *inside,
            ]
        )
        assert done.returncode == 0, done.stderr


def environment(images: dict[str, str]) -> dict[str, str]:
    """compose's variables: real, random secrets (URL-safe where they go into URLs), the images,
    and ports 0, so that Docker picks free ones on 127.0.0.1."""
    return {
        "NETSYNC_SECRET_KEY": secrets.token_urlsafe(48),
        "NETSYNC_REQUEST_SECRET_KEY": secrets.token_urlsafe(48),
        "NETSYNC_REQUEST_SERVICE_TOKEN": secrets.token_urlsafe(48),
        "NETSYNC_ADMIN_PASSWORD": secrets.token_urlsafe(18),
        "RESPONSE_DB_PASSWORD": secrets.token_hex(24),
        "REQUEST_DB_PASSWORD": secrets.token_hex(24),
        "REDIS_PASSWORD": secrets.token_hex(24),
        "NETSYNC_PUBLISH_ADDRESS": "127.0.0.1",
        "NETSYNC_RESPONSE_API_PORT": "0",
        "NETSYNC_REQUEST_API_PORT": "0",
        **images,
    }


def assert_all_healthy(stack: Stack) -> None:
    """Every service is up and its own healthcheck passes; the migrations ran and succeeded."""
    seen: dict[str, int] = {}
    for container in stack.containers():
        service = container["Service"]
        seen[service] = seen.get(service, 0) + 1
        if service in MIGRATIONS:
            assert (container["State"], container["ExitCode"]) == ("exited", 0), container
        else:
            assert (container["State"], container["Health"]) == ("running", "healthy"), container
    assert seen == {
        "response-db": 1,
        "request-db": 1,
        "redis": 1,
        "migrate-response": 1,
        "migrate-request": 1,
        "response-api": 1,
        "request-api": 1,
        "importer": 1,
        **REPLICAS,
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Session:
    """The README's example session, over the published ports."""

    response: httpx.Client
    request: httpx.Client
    service_token: str
    token: str = ""

    def sign_in_admin(self, password: str) -> None:
        answer = self.response.post(
            "/api/v1/auth/token", data={"username": "admin", "password": password}
        )
        assert answer.status_code == 200, answer.text
        self.token = answer.json()["access_token"]

    def create_user(self, username: str, password: str) -> str:
        answer = self.response.post(
            "/api/v1/users",
            headers=bearer(self.token),
            json={"username": username, "password": password},
        )
        assert answer.status_code == 201, answer.text
        user_id: str = answer.json()["id"]
        return user_id

    def reset_password(self, user_id: str, password: str) -> dict[str, Any]:
        answer = self.response.post(
            f"/api/v1/users/{user_id}/reset-password",
            headers=bearer(self.token),
            json={"new_password": password},
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        assert body["success"] is True
        return body

    def job_state(self, job_id: str, deadline_s: float) -> dict[str, Any]:
        """The sync job, once it is complete."""
        until = time.monotonic() + deadline_s
        while True:
            answer = self.response.get(f"/api/v1/jobs/{job_id}", headers=bearer(self.token))
            assert answer.status_code == 200, answer.text
            job: dict[str, Any] = answer.json()
            if job["state"] == "complete" or time.monotonic() > until:
                return job
            time.sleep(0.1)

    def wait_synced(self, user_id: str, version: int, deadline_s: float) -> float:
        """Seconds until the Request side holds ``version`` of the user (read with the service
        token: polling a sign-in would spend the account's sign-in attempts)."""
        started = time.monotonic()
        while True:
            answer = self.request.get(
                f"/api/v1/users/{user_id}", headers=bearer(self.service_token)
            )
            if answer.status_code == 200 and answer.json()["version"] >= version:
                return time.monotonic() - started
            assert answer.status_code in {200, 404}, answer.text
            assert time.monotonic() - started < deadline_s, (
                f"user {user_id} version {version} not on the Request side after {deadline_s} s"
            )
            time.sleep(0.1)

    def sign_in_on_request(self, username: str, password: str) -> dict[str, Any]:
        answer = self.request.post(
            "/api/v1/auth/login", json={"username": username, "password": password}
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body
