"""The compose test's fixtures: the images (built where missing), the stack brought up once per
module and torn down with ``down -v``, and a signed-in API session."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.compose.stack import (
    BUILD,
    IMAGE_TARGET_BYTES,
    IMAGES,
    INSTALL,
    Run,
    Session,
    Stack,
    docker_missing,
    environment,
    image_size,
    say,
    write_keys,
)


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


@pytest.fixture
def session(stack: Stack) -> Iterator[Session]:
    with (
        httpx.Client(base_url=stack.url("response-api", 8000), timeout=30) as response,
        httpx.Client(base_url=stack.url("request-api", 8001), timeout=30) as request,
    ):
        session = Session(response, request, stack.service_token)
        session.sign_in_admin(stack.admin_password)
        yield session
