"""A Redis primary, its replica and three Sentinels, as real processes on loopback ports.

Everything has a password: the two Redis servers one, the Sentinels another (so a client that
forgets to give the Sentinels theirs fails at once). Down-after is one second, so a killed
primary is replaced within a few seconds, as a production Sentinel tuned for fast failover would.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ops.embedded import redis_server_binary
from tests.support import free_port

SERVICE = "netsync"


class SentinelGroup:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.password = secrets.token_urlsafe(16)
        self.sentinel_password = secrets.token_urlsafe(16)
        self.ports = {"a": free_port(), "b": free_port()}
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.primary = "a"
        root.mkdir(parents=True, exist_ok=True)
        self._server("a", [])
        self._server("b", [f"replicaof 127.0.0.1 {self.ports['a']}"])
        for i, port in enumerate(self.sentinel_ports):
            self._sentinel(i, port)
        self._wait_ready()

    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return (
            f"redis+sentinel://:{self.password}@{hosts}/{SERVICE}/0"
            f"?sentinel_password={self.sentinel_password}"
        )

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, name: str, conf: Path, *extra: str) -> None:
        with (self.root / f"{name}.out").open("wb") as log:
            self.procs[name] = subprocess.Popen(
                [redis_server_binary(), str(conf), *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _server(self, name: str, extra: list[str]) -> None:
        data = self.root / name
        data.mkdir(exist_ok=True)
        conf = data / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {self.ports[name]}",
                    "bind 127.0.0.1",
                    f"dir {data}",
                    'save ""',
                    "appendonly no",
                    f"requirepass {self.password}",
                    f"masterauth {self.password}",
                    "maxmemory-policy noeviction",
                    *extra,
                    "",
                ]
            )
        )
        self._spawn(name, conf)

    def _sentinel(self, i: int, port: int) -> None:
        data = self.root / f"sentinel-{i}"
        data.mkdir(exist_ok=True)
        conf = data / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        conf.write_text(
            "\n".join(
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    f"dir {data}",
                    f"sentinel monitor {SERVICE} 127.0.0.1 {self.ports['a']} 2",
                    f"sentinel auth-pass {SERVICE} {self.password}",
                    f"sentinel down-after-milliseconds {SERVICE} 1000",
                    f"sentinel failover-timeout {SERVICE} 10000",
                    f"sentinel parallel-syncs {SERVICE} 1",
                    f"requirepass {self.sentinel_password}",
                    f"sentinel sentinel-pass {self.sentinel_password}",
                    "",
                ]
            )
        )
        self._spawn(f"sentinel-{i}", conf, "--sentinel")

    def _wait_ready(self, timeout: float = 20.0) -> None:
        """The replica in sync and every Sentinel knowing the replica and the other two."""

        def ready() -> bool:
            primary = SyncRedis(port=self.ports["a"], password=self.password, socket_timeout=1)
            try:
                replication: dict[str, Any] = primary.info("replication")  # type: ignore[assignment]
                if replication.get("connected_slaves", 0) < 1:
                    return False
                for port in self.sentinel_ports:
                    with SyncRedis(port=port, password=self.sentinel_password) as sentinel:
                        masters: dict[str, dict[str, Any]] = sentinel.sentinel_masters()
                        state = masters.get(SERVICE, {})
                    if state.get("num-other-sentinels", 0) < 2 or not state.get("num-slaves"):
                        return False
                return True
            except (OSError, RedisError):  # not up yet
                return False
            finally:
                primary.close()

        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited; see {self.root / (name + '.out')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Sentinel group not ready in {timeout} s; see {self.root}")
            time.sleep(0.2)

    # -- faults ---------------------------------------------------------------------------

    def kill_primary(self) -> str:
        """SIGKILL the current primary; returns its address."""
        name = self.primary
        self.procs[name].kill()
        self.procs[name].wait()
        return f"127.0.0.1:{self.ports[name]}"

    async def wait_promotion(self, old: str, timeout: float = 30.0) -> float:
        """Until a majority of the Sentinels name a primary other than ``old``; its moment."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            named = []
            for port in self.sentinel_ports:
                s = Redis(
                    port=port,
                    password=self.sentinel_password,
                    socket_timeout=1,
                    decode_responses=True,
                )
                try:
                    host, p = await s.sentinel_get_master_addr_by_name(SERVICE)  # type: ignore[no-untyped-call]
                    named.append(f"{host}:{p}")
                except (OSError, RedisError, TypeError):  # down, or no answer yet
                    pass
                finally:
                    await s.aclose()
            moved = [a for a in named if a != old]
            if len(moved) >= 2:
                port = int(moved[0].rpartition(":")[2])
                self.primary = next(n for n, p in self.ports.items() if p == port)
                return time.monotonic()
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no promotion within {timeout} s")

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
