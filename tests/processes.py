"""Real netsync processes for tests: each started as the operator starts it (``uvicorn``,
``arq``, ``python -m importer``) against a sandbox's environment, its output captured to a file,
killed with the test run if the run dies."""

from __future__ import annotations

import asyncio
import ctypes
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support import ROOT, Sandbox, eventually, free_port


def _die_with_parent() -> None:
    """A test run that is killed (a timeout, Ctrl-C) must not leave its processes running."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Process:
    """A real netsync process with its output captured to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        log.close()
        return self

    def kill(self, sig: int = 9) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def response_api(sandbox: Sandbox, port: int, **env: str) -> Process:
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)]
    return Process(f"response-api-{port}", argv, sandbox.env(**env), sandbox.root)


def request_api(sandbox: Sandbox, port: int, **env: str) -> Process:
    argv = [sys.executable, "-m", "uvicorn", "importer.api:app", "--port", str(port)]
    return Process(f"request-api-{port}", argv, sandbox.env(**env), sandbox.root)


def worker(sandbox: Sandbox, name: str = "worker", **env: str) -> Process:
    argv = [sys.executable, "-m", "arq", "jobs.WorkerSettings"]
    return Process(name, argv, sandbox.env(**env), sandbox.root)


def bulk_worker(sandbox: Sandbox, name: str = "bulk-worker", **env: str) -> Process:
    argv = [sys.executable, "-m", "arq", "jobs.BulkWorkerSettings"]
    return Process(name, argv, sandbox.env(**env), sandbox.root)


def importer(sandbox: Sandbox, name: str = "importer", **env: str) -> Process:
    return Process(name, [sys.executable, "-m", "importer"], sandbox.env(**env), sandbox.root)


async def wait_http(url: str, timeout: float = 20.0) -> None:
    async with httpx.AsyncClient() as client:

        async def up() -> bool:
            try:
                return (await client.get(url)).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(up, timeout=timeout, interval=0.1)


ADMIN_PASSWORD = "bootstrap secret for processes"


async def bootstrap_admin(sandbox: Sandbox, **env: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.bootstrap",
        env=sandbox.env(NETSYNC_ADMIN_PASSWORD=ADMIN_PASSWORD, **env),
    )
    assert await proc.wait() == 0


async def token(client: httpx.AsyncClient, base: str, username: str, password: str) -> str:
    response = await client.post(
        f"{base}/api/v1/auth/token", data={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def start_system(sandbox: Sandbox, procs: list[Process]) -> tuple[str, str]:
    """The administrator, then the Response API, a worker, the importer and the Request API as
    processes (added to ``procs``, which stops them); the two APIs' base URLs once both answer."""
    api_port, request_port = free_port(), free_port()
    await bootstrap_admin(sandbox)
    procs += [
        response_api(sandbox, api_port).start(),
        worker(sandbox).start(),
        importer(sandbox).start(),
        request_api(sandbox, request_port).start(),
    ]
    api, req = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{request_port}"
    await wait_http(f"{api}/ready")
    await wait_http(f"{req}/ready")
    return api, req
