"""Every long-running process stops within its bound after SIGTERM, whatever is down, and nothing
made before the shutdown is lost: each outage below, with all five process kinds running.

The bounds are the documented ones (``docs/reliability.md``): the workers'
``job_completion_wait + jobs.shutdown.GRACE_S``, the others' a few seconds. The measured times
are printed (``-s``) for the reliability notes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from jobs.shutdown import GRACE_S
from ops.embedded import EmbeddedRedis
from tests.processes import (
    ADMIN_PASSWORD,
    Process,
    bootstrap_admin,
    bulk_worker,
    importer,
    request_api,
    response_api,
    token,
    wait_http,
    worker,
)
from tests.support import Sandbox, database_refusing, eventually, free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

#: The bound per process kind, in seconds (``docs/reliability.md``): a worker lets a running job
#: finish for up to ``job_completion_wait`` (60 s), then closes within ``GRACE_S``; the APIs and
#: the importer stop between requests and batches.
WORKER_BOUND = 60 + GRACE_S
BOUNDS = {
    "response-api": 10.0,
    "request-api": 10.0,
    "importer": 10.0,
    "worker": WORKER_BOUND,
    "bulk-worker": WORKER_BOUND,
}


@contextlib.contextmanager
def redis_server() -> Iterator[EmbeddedRedis]:
    path = Path("/tmp") / f"nss-{uuid.uuid4().hex[:8]}"  # Unix socket paths must be short
    server = EmbeddedRedis(path)
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def outage(kind: str, sandbox: Sandbox, redis: EmbeddedRedis) -> AsyncIterator[None]:
    if kind == "redis":
        redis.stop()
        yield
    elif kind == "response-db":
        async with database_refusing(sandbox.services.response_url):
            yield
    elif kind == "request-db":
        async with database_refusing(sandbox.services.request_url):
            yield
    else:
        yield


def kind(proc: Process) -> str:
    """``response-api-8000`` → ``response-api``."""
    return re.sub(r"-[0-9]+$", "", proc.name)


def start_all(sandbox: Sandbox, env: dict[str, str], api_port: int, req_port: int) -> list[Process]:
    return [
        response_api(sandbox, api_port, **env).start(),
        worker(sandbox, **env).start(),
        bulk_worker(sandbox, **env).start(),
        importer(sandbox, **env).start(),
        request_api(sandbox, req_port, **env).start(),
    ]


@pytest.mark.parametrize("down", ["nothing", "redis", "response-db", "request-db"])
async def test_every_process_stops_in_time_whatever_is_down_and_nothing_is_lost(
    sandbox: Sandbox, procs: list[Process], down: str
) -> None:
    with redis_server() as redis:
        env = {"NETSYNC_REDIS_URL": redis.url()}
        api_port, req_port = free_port(), free_port()
        api, req = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{req_port}"
        await bootstrap_admin(sandbox, **env)
        procs += start_all(sandbox, env, api_port, req_port)
        await wait_http(f"{api}/ready")
        await wait_http(f"{req}/ready")
        async with httpx.AsyncClient(timeout=10) as client:
            admin = {"Authorization": f"Bearer {await token(client, api, 'admin', ADMIN_PASSWORD)}"}
            created = await client.post(
                f"{api}/api/v1/users",
                json={"username": "olga", "password": "first pass phrase"},
                headers=admin,
            )
            assert created.status_code == 201, created.text
            reset = await client.post(
                f"{api}/api/v1/users/{created.json()['id']}/reset-password",
                json={"new_password": "made before the shutdown"},
                headers=admin,
            )
            assert reset.status_code == 200, reset.text
            await asyncio.sleep(
                1.5
            )  # the workers and the importer are idle again (or busy retrying)

            async with outage(down, sandbox, redis):
                await asyncio.sleep(1.0)  # the processes notice: reconnect loops are running
                started = time.monotonic()
                for proc in procs:
                    assert proc.proc is not None
                    proc.proc.send_signal(signal.SIGTERM)
                took: dict[str, float] = {}
                codes: dict[str, int | None] = {}
                kind_of = {p.name: kind(p) for p in procs}
                for proc in procs:
                    assert proc.proc is not None
                    left = started + BOUNDS[kind(proc)] + 5 - time.monotonic()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        await asyncio.to_thread(proc.proc.wait, max(0.1, left))
                    took[proc.name] = time.monotonic() - started
                    codes[proc.name] = proc.proc.poll()
                print(f"\n{down} down: " + ", ".join(f"{n} {s:.1f} s" for n, s in took.items()))
                late = {n: s for n, s in took.items() if s > BOUNDS[kind_of[n]] or codes[n] is None}
                assert not late, (
                    late,
                    {p.name: p.output()[-1500:] for p in procs if p.name in late},
                )
                # uvicorn re-raises the signal once it has shut down gracefully: -SIGTERM
                clean = {
                    n: c == 0 or (c == -signal.SIGTERM and "api" in n) for n, c in codes.items()
                }
                unclean = {n: p.output()[-3000:] for p in procs if not clean[(n := p.name)]}
                assert not unclean, (codes, unclean)

            if down == "redis":
                redis.restart()  # back, with its data
            procs[:] = start_all(sandbox, env, api_port, req_port)
            await wait_http(f"{req}/ready")

            async def crossed() -> bool:
                login = await client.post(
                    f"{req}/api/v1/auth/login",
                    json={"username": "olga", "password": "made before the shutdown"},
                )
                return login.status_code == 200

            await eventually(crossed, timeout=30, interval=0.25)


async def test_a_second_sigterm_ends_a_worker_at_once(
    sandbox: Sandbox, procs: list[Process]
) -> None:
    with redis_server() as redis:
        env = {"NETSYNC_REDIS_URL": redis.url()}
        proc = worker(sandbox, **env).start()
        procs.append(proc)
        assert proc.proc is not None
        await asyncio.sleep(3)  # started, polling
        redis.stop()  # its shutdown will now have to give up on Redis
        await asyncio.sleep(0.5)
        proc.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.proc.wait, 5)
        print(f"\nsecond SIGTERM: exited in {time.monotonic() - started:.2f} s with {code}")
        assert time.monotonic() - started < 2
        assert code in (0, 1)  # 1: cut short by the second signal; 0: it was already done


async def test_run_up_stops_on_ctrl_c_when_its_embedded_redis_has_died(tmp_path: Path) -> None:
    state = Path("/tmp") / f"nsu-{uuid.uuid4().hex[:8]}"
    state.mkdir(mode=0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETSYNC_")}
    ports = [free_port() for _ in range(5)]
    env |= {
        "NETSYNC_STATE_DIR": str(state),
        "NETSYNC_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "NETSYNC_RESPONSE_API_PORT": str(ports[0]),
        "NETSYNC_REQUEST_API_PORT": str(ports[1]),
        "NETSYNC_WORKER_METRICS_PORT": str(ports[2]),
        "NETSYNC_BULK_WORKER_METRICS_PORT": str(ports[3]),
        "NETSYNC_IMPORTER_METRICS_PORT": str(ports[4]),
    }
    log = (tmp_path / "up.log").open("wb")
    proc = _start_up(env, log)
    try:
        await wait_http(f"http://127.0.0.1:{ports[0]}/ready", timeout=120)
        conf = state / "redis" / "redis.conf"
        for pid in _pgrep(str(conf)):
            os.kill(int(pid), signal.SIGKILL)  # the embedded Redis dies
        await asyncio.sleep(1)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, WORKER_BOUND + 20)
        took = time.monotonic() - started
        print(f"\n./run up without its Redis: stopped in {took:.1f} s with {code}")
        assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
        left = _pgrep(str(state))
        assert not left, f"still running: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
        for pid in _pgrep(str(state)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(state, ignore_errors=True)


def _start_up(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ops.devstack", "up"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _pgrep(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return found.stdout.split()
