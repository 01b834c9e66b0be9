"""``/metrics``, ``/health`` and ``/ready`` for the daemons (worker, importer).

The daemons have no HTTP API of their own, so each serves these three routes on its own port
(``NETSYNC_WORKER_METRICS_PORT``, ``NETSYNC_IMPORTER_METRICS_PORT``; 0 disables) from a tiny
Starlette app run by ``uvicorn.Server`` as a task inside the daemon's event loop. Being in the
same loop is the point: when the loop is stuck, the probes stop answering too.

- ``/health`` (liveness) is a cheap synchronous check of the daemon's own progress signal, never
  of a dependency: a database outage must not get every replica restarted.
- ``/ready`` (readiness) checks the dependencies, each bounded by a timeout.
- ``/metrics`` first runs the daemon's refresh hook (gauges sampled on scrape, such as the queue
  depth), then renders the registry.

The socket is bound before the server starts, so a port already in use is a clear start-up
error here instead of ``sys.exit`` deep inside uvicorn. uvicorn's own signal capture is turned
off: signals belong to the daemon (arq's worker, the importer's ``main()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from netsync import metrics
from netsync.config import ConfigurationError

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 2.0

Liveness = Callable[[], tuple[bool, dict[str, Any]]]
Check = Callable[[], Awaitable[bool]]
Refresh = Callable[[], Awaitable[None]]


async def bounded(check: Check, timeout_s: float = CHECK_TIMEOUT_S) -> bool:
    """Run a readiness check; any error or a timeout means "not ready"."""
    try:
        async with asyncio.timeout(timeout_s):
            return await check()
    except Exception:  # the reason is for the logs of the dependency, not for the prober
        return False


@dataclass
class Probes:
    """What a daemon tells its prober: liveness, readiness checks by name, a metrics refresh."""

    liveness: Liveness
    readiness: dict[str, Check] = field(default_factory=dict)
    refresh: Refresh | None = None

    async def health(self, _: Request) -> JSONResponse:
        ok, detail = self.liveness()
        body = {"status": "ok" if ok else "stalled", **detail}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def ready(self, _: Request) -> JSONResponse:
        names = list(self.readiness)
        results = await asyncio.gather(*(bounded(self.readiness[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        ok = all(results)
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    async def metrics(self, _: Request) -> Response:
        if self.refresh is not None:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_S):
                    await self.refresh()
            except Exception as exc:  # serve what we have; the stale gauges are still useful
                log.debug("metrics refresh failed", extra={"error": repr(exc)})
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/health", self.health),
                Route("/ready", self.ready),
                Route("/metrics", self.metrics),
            ]
        )


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon owns SIGTERM and SIGINT


class ProbeServer:
    """Serve a daemon's probes on ``host:port`` until ``stop()``."""

    def __init__(self, probes: Probes, *, host: str, port: int, name: str) -> None:
        self.probes = probes
        self.host = host
        self.name = name
        self._port = port
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._port

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._port))
        except OSError as exc:
            sock.close()
            raise ConfigurationError(
                f"{self.name}: cannot serve metrics on {self.host}:{self._port} ({exc.strerror}); "
                "give each replica on one host its own port, or 0 to disable"
            ) from exc
        sock.listen(128)
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        return sock

    async def start(self) -> None:
        sock = self._bind()
        config = uvicorn.Config(
            self.probes.app(), log_config=None, access_log=False, lifespan="off"
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="probes")
        log.info("serving probes", extra={"host": self.host, "port": self._port})

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 5)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        self._server = self._task = None


async def start_probes(probes: Probes, *, host: str, port: int, name: str) -> ProbeServer | None:
    """Start a probe server, or nothing when the port is 0."""
    if port == 0:
        return None
    server = ProbeServer(probes, host=host, port=port, name=name)
    await server.start()
    return server
