"""Sign-in flood: 200 concurrent wrong-password logins against one Response API process.

    ./run bench login_flood [--flood 200] [--account-guesses 30]

Starts ``uvicorn app.main:app`` in its own process (``NETSYNC_HASH_THREADS`` unset: the pool is
sized from the CPU quota) on a scratch Response database created and migrated on the server named
by ``NETSYNC_BENCH_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``) and
the Redis of ``NETSYNC_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``). Then, at once:
``--flood`` logins with wrong passwords for as many different (unknown) names from many client
addresses' worth of connections, ``--account-guesses`` wrong guesses at one real account, a
``GET /health`` poller, and the honest user signing in. Printed: the API's peak RSS (``VmHWM``),
``/health`` p50/p99 during the flood, after how many failures the account was throttled, how many
answers were 401/429/503, and the honest user's sign-in time during the flood and after it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PASSWORD = "a quiet pass phrase 9"


def _vm(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _wait(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} never became ready")


async def flood(base: str, pid: int, args: argparse.Namespace, admin_password: str) -> None:
    limits = httpx.Limits(max_connections=args.flood + 50)
    # each guesser from an address of its own (127.0.0.2 …): a distributed flood, which the
    # per-address limit does not stop; the per-account limit and the hashing bound must
    guessers = [
        httpx.AsyncClient(
            base_url=base,
            timeout=60,
            transport=httpx.AsyncHTTPTransport(local_address=f"127.0.{1 + i // 250}.{2 + i % 250}"),
        )
        for i in range(args.flood + 1)
    ]
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        token = (
            await client.post(
                "/api/v1/auth/token", data={"username": "admin", "password": admin_password}
            )
        ).json()["access_token"]
        for user in ("honest", "bystander"):  # the attacked account, and someone else
            created = await client.post(
                "/api/v1/users",
                json={"username": user, "password": PASSWORD},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert created.status_code == 201, created.text
        rss_before = _vm(pid, "VmRSS")
        health: list[float] = []
        stop = asyncio.Event()

        async def poll() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                await client.get("/health")
                health.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.02)

        async def guess(name: str, who: httpx.AsyncClient) -> int:
            answer = await who.post(
                "/api/v1/auth/token", data={"username": name, "password": "wrong guess"}
            )
            return answer.status_code

        async def guesses_at_the_account() -> list[int]:
            return [await guess("honest", guessers[-1]) for _ in range(args.account_guesses)]

        async def honest() -> tuple[float, int]:
            await asyncio.sleep(0.2)
            started = time.perf_counter()
            answer = await client.post(
                "/api/v1/auth/token", data={"username": "bystander", "password": PASSWORD}
            )
            return time.perf_counter() - started, answer.status_code

        poller = asyncio.create_task(poll())
        started = time.perf_counter()
        codes, account, during = await asyncio.gather(
            asyncio.gather(
                *(guess(f"nobody-{uuid.uuid4().hex[:8]}", guessers[i]) for i in range(args.flood))
            ),
            guesses_at_the_account(),
            honest(),
        )
        seconds = time.perf_counter() - started
        stop.set()
        await poller
        after_start = time.perf_counter()
        after = await client.post(
            "/api/v1/auth/token", data={"username": "admin", "password": admin_password}
        )
        after_s = time.perf_counter() - after_start
    for guesser in guessers:
        await guesser.aclose()
    counts = {code: codes.count(code) for code in sorted(set(codes))}
    throttled_after = account.index(429) if 429 in account else None
    health.sort()
    p99 = health[min(len(health) - 1, int(len(health) * 0.99))]
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min), {os.cpu_count()} CPUs")
    print(f"flood of {args.flood} wrong logins (unknown names) took {seconds:.1f} s: {counts}")
    print(
        f"one account, {args.account_guesses} guesses in a row: throttled after "
        f"{throttled_after} failures; answers {sorted(set(account))}"
    )
    print(f"peak RSS {_vm(pid, 'VmHWM'):.0f} MB (before the flood {rss_before:.0f} MB)")
    print(
        f"/health during the flood: p50 {statistics.median(health):.1f} ms, p99 {p99:.1f} ms"
        f" ({len(health)} requests)"
    )
    print(
        f"another user's sign-in during the flood: {during[0] * 1000:.0f} ms ({during[1]});"
        f" after it: {after_s * 1000:.0f} ms ({after.status_code})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flood", type=int, default=200)
    parser.add_argument("--account-guesses", type=int, default=30)
    args = parser.parse_args()
    from netsync.config import with_database
    from ops.migrate import upgrade

    admin_url = os.environ.get(
        "NETSYNC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    redis_url = os.environ.get("NETSYNC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    name = f"nsbench_{uuid.uuid4().hex[:8]}_response"
    asyncio.run(_sql(admin_url, f'CREATE DATABASE "{name}"'))
    url = with_database(admin_url, name)
    admin_password = "bench operator pass phrase " + uuid.uuid4().hex[:6]
    port = 18_000 + os.getpid() % 1000
    proc: subprocess.Popen[bytes] | None = None
    try:
        upgrade("response", url)
        with tempfile.TemporaryDirectory(prefix="nsbench-") as tmp:
            env = {k: v for k, v in os.environ.items() if not k.startswith("NETSYNC_")}
            env |= {
                "NETSYNC_ENV": "test",
                "NETSYNC_STATE_DIR": tmp,
                "NETSYNC_RESPONSE_DATABASE_URL": url,
                "NETSYNC_REDIS_URL": redis_url,
                "NETSYNC_SECRET_KEY": "bench-secret-" + "b" * 40,
                "NETSYNC_ADMIN_PASSWORD": admin_password,
                "NETSYNC_SIGN_IN_NAMESPACE": name,
                "NETSYNC_LOG_LEVEL": "ERROR",
            }
            subprocess.run([sys.executable, "-m", "app.bootstrap"], env=env, check=True, cwd=ROOT)
            proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
                 "--no-access-log", "--log-level", "warning"],
                env=env,
                cwd=ROOT,
            )  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            asyncio.run(_wait(base + "/ready"))
            asyncio.run(flood(base, proc.pid, args, admin_password))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        asyncio.run(_sql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
