"""compose.yaml brought up for real: the images built from Debian packages by
deploy/images/build.sh (no registry, no PyPI inside a container), both networks in containers,
the README's example session run against them over the ports published on 127.0.0.1, then a sync
worker killed outright while passwords change, and every change still reaching the Request side.

Why: tests/test_deploy_compose.py and tests/test_deploy_image.py read compose.yaml and the
Dockerfile offline. Only a real ``docker compose up`` shows that the images build; that every
process starts as uid 10001 on a read-only root file system with its keys and secrets where
compose mounts them; that the PostgreSQL and Redis images honour what compose passes them; that
every healthcheck passes; and that the sync survives a worker's death with the containers' own
ordering and restarts.

It needs Docker with the compose plugin, and a cold build takes minutes, so it is not part of
``./run test``: it carries the ``compose`` marker, which pyproject.toml deselects, and
``./run test-compose`` runs it. Without Docker it skips, naming the command that installs and
starts it (deploy/images/install-docker.sh); with NETSYNC_COMPOSE_REQUIRED=1 (CI) that is a
failure instead. The NETSYNC_*_IMAGE variables name other images, as they do for build.sh.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.compose, pytest.mark.timeout(3600)]

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


@pytest.fixture(scope="module")
def measured(pytestconfig: pytest.Config) -> Iterator[Run]:
    measured = Run()
    yield measured
    steps = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in measured.timings.items())
    total = time.monotonic() - measured.started
    say(pytestconfig, f"took {total:.0f} s ({steps})")


@pytest.fixture(scope="module")
def images(
    pytestconfig: pytest.Config, measured: Run, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Every image compose runs, built from Debian packages by build.sh where missing or out of
    date (it keeps what exists: a warm run takes seconds)."""
    reason = docker_missing()
    if reason is not None:
        message = f"{reason}: run `{INSTALL}` (as root) to install and start it"
        if os.environ.get("NETSYNC_COMPOSE_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    images = {name: os.environ.get(name, default) for name, default in IMAGES.items()}
    if "NETSYNC_PYTHON_IMAGE" in os.environ and "NETSYNC_PYTHON_BUILD_IMAGE" not in os.environ:
        # as build.sh and compose.yaml: the build stage runs on a Python image named alone
        images["NETSYNC_PYTHON_BUILD_IMAGE"] = images["NETSYNC_PYTHON_IMAGE"]
    log = tmp_path_factory.mktemp("images") / "build.log"
    started = time.monotonic()
    with log.open("w") as out:
        built = subprocess.run(
            [str(BUILD)],
            env={**os.environ, **images},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=3000,
            check=False,
        )
    measured.timings["images"] = time.monotonic() - started
    if built.returncode != 0:
        pytest.fail(f"{BUILD} failed:\n" + "\n".join(log.read_text().splitlines()[-40:]))
    size = image_size(images["NETSYNC_IMAGE"])
    say(
        pytestconfig,
        f"image {images['NETSYNC_IMAGE']} is {size / 1e6:.0f} MB "
        f"(target {IMAGE_TARGET_BYTES / 1e6:.0f} MB); images ready in "
        f"{measured.timings['images']:.0f} s",
    )
    assert size <= IMAGE_TARGET_BYTES, f"{images['NETSYNC_IMAGE']} is {size / 1e6:.0f} MB"
    return images


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
    netsync = [cli] if cli else [sys.executable, "-c", "from netsync.cli import main; main()"]
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


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    images: dict[str, str],
    measured: Run,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """``docker compose up -d --wait`` of a project of its own, always taken down with its
    volumes (``down -v``); the containers' logs are shown when a test failed."""
    directory = tmp_path_factory.mktemp("compose")
    write_keys(directory)
    variables = environment(images)
    (directory / ".env").write_text("".join(f"{k}={v}\n" for k, v in variables.items()))
    # what compose reads from the process environment wins over .env: the same values
    stack = Stack(f"netsync-test-{uuid.uuid4().hex[:10]}", directory, {**os.environ, **variables})
    failed_before = request.session.testsfailed

    def show_logs() -> None:
        logs = stack.compose("logs", "--no-color", "--tail", "40", check=False)
        say(request.config, "the containers' logs:\n" + logs[-30000:])

    try:
        started = time.monotonic()
        try:
            stack.compose("up", "--detach", "--wait", "--no-build", "--pull", "never", timeout=900)
        except AssertionError:
            show_logs()
            raise
        measured.timings["up --wait"] = time.monotonic() - started
        yield stack
        if request.session.testsfailed > failed_before:
            show_logs()
    finally:
        started = time.monotonic()
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "60")
        measured.timings["down -v"] = time.monotonic() - started


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


@pytest.fixture
def session(stack: Stack) -> Iterator[Session]:
    with (
        httpx.Client(base_url=stack.url("response-api", 8000), timeout=30) as response,
        httpx.Client(base_url=stack.url("request-api", 8001), timeout=30) as request,
    ):
        session = Session(response, request, stack.service_token)
        session.sign_in_admin(stack.admin_password)
        yield session


def test_the_readme_session_runs_against_the_containers(
    stack: Stack, session: Session, pytestconfig: pytest.Config
) -> None:
    assert_all_healthy(stack)
    alice = session.create_user("alice", "correct horse battery")
    changed = session.reset_password(alice, "a brand new secret 42")
    job = session.job_state(changed["sync_job_id"], SYNC_DEADLINE_S)
    assert job["state"] == "complete", job
    assert job["result"]["stream"] == "changes"
    lag = session.wait_synced(alice, changed["version"], SYNC_DEADLINE_S)
    signed_in = session.sign_in_on_request("alice", "a brand new secret 42")
    assert signed_in["authenticated"] is True
    assert signed_in["user_id"] == alice
    assert signed_in["role"] == "user"
    say(pytestconfig, f"a changed password reached the Request side {lag:.2f} s after the job")

    # the Request API's own sign-in token, for an administrator: the sync's state
    admin = session.sign_in_on_request("admin", stack.admin_password)
    status = session.request.get("/api/v1/sync/status", headers=bearer(admin["access_token"]))
    assert status.status_code == 200, status.text
    state = status.json()
    assert state["open_gaps"] == []
    assert state["files_quarantined"] == 0
    streams = {s["stream"]: s for s in state["streams"]}
    assert streams["changes"]["last_applied_seq"] >= job["result"]["seq"]


def test_a_killed_worker_loses_no_password_change(
    stack: Stack, session: Session, pytestconfig: pytest.Config
) -> None:
    """SIGKILL one of the two sync workers while passwords change, then change more: every
    change reaches the Request side (the other worker, the sweeper or arq's retry take the
    killed worker's work), and ``docker compose up`` brings the killed one back healthy."""
    users = {
        f"user{i}": session.create_user(f"user{i}", f"first pass phrase {i}") for i in range(8)
    }
    for user_id in users.values():
        session.wait_synced(user_id, 1, SYNC_DEADLINE_S)
    victim, survivor = stack.container_ids("worker")
    final: dict[str, str] = {}
    versions: dict[str, int] = {}

    def change(name: str, round_: int) -> None:
        # (a password may not contain the username)
        final[name] = f"pass phrase {round_} {secrets.token_hex(6)}"
        versions[name] = session.reset_password(users[name], final[name])["version"]

    # a burst with the kill in its middle, then a round on the surviving worker alone
    with ThreadPoolExecutor(max_workers=4) as pool:
        burst = [pool.submit(change, name, 1) for name in users]
        burst[2].result()
        killed = run(["docker", "kill", victim])
        assert killed.returncode == 0, killed.stderr
        for future in burst:
            future.result()
    state = run(["docker", "inspect", "--format", "{{.State.Status}}", victim]).stdout.strip()
    assert state == "exited", state
    killed_at = time.monotonic()
    for name in users:
        change(name, 2)
    lags = [session.wait_synced(users[name], versions[name], RECOVERY_DEADLINE_S) for name in users]
    for name, password in final.items():
        signed_in = session.sign_in_on_request(name, password)
        assert signed_in["authenticated"] is True, (name, signed_in)
    say(
        pytestconfig,
        f"{2 * len(users)} changes around a killed worker, all on the Request side "
        f"{time.monotonic() - killed_at:.1f} s after the kill (slowest {max(lags):.2f} s)",
    )

    # compose starts the killed container again; everything is healthy, and it syncs
    stack.compose("up", "--detach", "--wait", "--no-build", "--pull", "never", timeout=600)
    assert set(stack.container_ids("worker")) == {victim, survivor}
    assert_all_healthy(stack)
    after = session.reset_password(users["user0"], "one more pass phrase after the restart")
    session.wait_synced(users["user0"], after["version"], SYNC_DEADLINE_S)
    signed_in = session.sign_in_on_request("user0", "one more pass phrase after the restart")
    assert signed_in["authenticated"] is True
