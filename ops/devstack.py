"""``./run up``: the whole system on one machine, supervised in one terminal.

Starts embedded PostgreSQL and Redis where no URL is configured, migrates both databases, creates
the administrator, then runs the processes of the design card with prefixed logs:

    response-api  uvicorn app.main:app          (127.0.0.1:8000)
    worker        arq jobs.WorkerSettings       (sync queue: password and other changes)
    bulk-worker   arq jobs.BulkWorkerSettings   (bulk queue: the schedule, snapshot exports)
    importer      python -m importer            (watch mode)
    request-api   uvicorn importer.api:app      (127.0.0.1:8001)

A process that exits unexpectedly is restarted with backoff. Ctrl-C (or SIGTERM) stops the
processes with SIGTERM, waits for them, then stops the embedded servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
from dataclasses import dataclass

from netsync.config import CommonSettings

#: A child that ran this long before it exited is restarted after 1 s again, not the grown delay.
HEALTHY_S = 60.0
COLORS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m"]
RESET = "\033[0m"


@dataclass(frozen=True)
class Proc:
    name: str
    argv: list[str]


def processes(host: str, api_port: int, request_port: int) -> list[Proc]:
    py = sys.executable
    return [
        Proc("response-api", [py, "-m", "uvicorn", "app.main:app", "--host", host,
                              "--port", str(api_port), "--no-access-log"]),
        Proc("worker", [py, "-m", "arq", "jobs.WorkerSettings"]),
        Proc("bulk-worker", [py, "-m", "arq", "jobs.BulkWorkerSettings"]),
        Proc("importer", [py, "-m", "importer"]),
        Proc("request-api", [py, "-m", "uvicorn", "importer.api:app", "--host", host,
                             "--port", str(request_port), "--no-access-log"]),
    ]  # fmt: skip


class Stack:
    """Embedded servers as needed, and the environment every child process gets."""

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self.env = dict(os.environ)
        self._stoppers: list[object] = []

    def start_services(self) -> None:
        from ops.embedded import EmbeddedPostgres, EmbeddedRedis

        state = self.settings.state_dir
        lines = []
        if not (self.env.get("NETSYNC_RESPONSE_DATABASE_URL") and
                self.env.get("NETSYNC_REQUEST_DATABASE_URL")):  # fmt: skip
            pg = EmbeddedPostgres(state / "pg")
            self._stoppers.append(pg)
            for var, db in (
                ("NETSYNC_RESPONSE_DATABASE_URL", "netsync_response"),
                ("NETSYNC_REQUEST_DATABASE_URL", "netsync_request"),
            ):
                if not self.env.get(var):
                    pg.create_database(db)
                    self.env[var] = pg.url(db)
                    lines.append(f"{var}={self.env[var]}")
            say(f"embedded PostgreSQL serving from {state / 'pg'}")
        if not self.env.get("NETSYNC_REDIS_URL"):
            redis = EmbeddedRedis(state / "redis")
            self._stoppers.append(redis)
            self.env["NETSYNC_REDIS_URL"] = redis.url()
            lines.append(f"NETSYNC_REDIS_URL={redis.url()}")
            say(f"embedded Redis serving on {redis.socket}")
        if lines:  # lets processes started by hand find the embedded servers (it holds the
            # embedded Redis's password: readable by this user only)
            path = state / "embedded.env"
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write("\n".join(lines) + "\n")

    def stop_services(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.settings.state_dir / "embedded.env").unlink()
        for server in reversed(self._stoppers):
            server.stop()  # type: ignore[attr-defined]

    def prepare(self) -> None:
        """Keys, migrations and the administrator, before any process starts."""
        import subprocess

        if self.settings.is_development and not self.env.get("NETSYNC_SIGNING_KEY_FILE"):
            from netsync.keys import ensure_dev_key_pair

            state = self.settings.state_dir
            ensure_dev_key_pair(state / "keys" / "signing.pem", state)

        for argv in ([sys.executable, "-m", "ops.migrate"],
                     [sys.executable, "-m", "app.bootstrap"]):  # fmt: skip
            subprocess.run(argv, env=self.env, check=True)  # noqa: S603


def _term_with_parent() -> None:
    """In the child, before exec: SIGTERM it when ``./run up`` dies, however it dies (a kill -9
    of the supervisor must not leave workers running with their ports bound)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def say(message: str) -> None:
    print(f"\033[1mnetsync\033[0m | {message}", flush=True)


async def _pump(name: str, color: str, stream: asyncio.StreamReader) -> None:
    prefix = f"{color}{name:>12}{RESET} | "
    while line := await stream.readline():
        sys.stdout.write(prefix + line.decode(errors="replace").rstrip("\n") + "\n")
        sys.stdout.flush()


async def _supervise(
    proc: Proc,
    color: str,
    env: dict[str, str],
    stop: asyncio.Event,
    children: dict[str, asyncio.subprocess.Process],
) -> None:
    backoff = 1.0
    while not stop.is_set():
        started = asyncio.get_running_loop().time()
        child = await asyncio.create_subprocess_exec(
            *proc.argv,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_term_with_parent,
        )
        children[proc.name] = child
        assert child.stdout is not None
        pump = asyncio.create_task(_pump(proc.name, color, child.stdout))
        code = await child.wait()
        await pump
        if stop.is_set():
            return
        if asyncio.get_running_loop().time() - started > HEALTHY_S:
            backoff = 1.0  # it ran well for a while: this crash starts the count again
        say(f"{proc.name} exited with {code}; restarting in {backoff:.0f} s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), backoff)
        backoff = min(backoff * 2, 30.0)


async def run_processes(env: dict[str, str], procs: list[Proc]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    children: dict[str, asyncio.subprocess.Process] = {}
    tasks = [
        asyncio.create_task(_supervise(p, COLORS[i % len(COLORS)], env, stop, children))
        for i, p in enumerate(procs)
    ]
    await stop.wait()
    say("stopping…")
    for child in children.values():
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
    _, pending = await asyncio.wait(tasks, timeout=15)
    for child in children.values():
        if child.returncode is None:
            child.kill()
    await asyncio.gather(*pending, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="./run up")
    parser.add_argument("command", choices=["up", "migrate", "services"], nargs="?", default="up")
    args = parser.parse_args()
    settings = CommonSettings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(settings)
    stack.start_services()
    try:
        stack.prepare()
        if args.command == "migrate":
            return
        host = os.environ.get("NETSYNC_BIND_HOST", "127.0.0.1")
        api_port = int(os.environ.get("NETSYNC_RESPONSE_API_PORT", "8000"))
        request_port = int(os.environ.get("NETSYNC_REQUEST_API_PORT", "8001"))
        stack.env.setdefault("NETSYNC_STATE_DIR", str(settings.state_dir))
        # The dashboard shows the Request Network's sync status through the Response API.
        stack.env.setdefault("NETSYNC_REQUEST_API_URL", f"http://127.0.0.1:{request_port}")
        stack.env.setdefault("NETSYNC_REQUEST_SERVICE_TOKEN", secrets.token_urlsafe(32))
        say(
            f"Response API http://{host}:{api_port}/docs · Request API http://{host}:{request_port}/docs"
        )
        say(f"Dashboard http://{host}:{api_port}/dashboard")
        asyncio.run(run_processes(stack.env, processes(host, api_port, request_port)))
    finally:
        stack.stop_services()
        say("stopped")


if __name__ == "__main__":
    main()
