"""What synchronous replication costs a commit here: one-row commits on a primary whose
standby is synchronous, against the same commits with ``synchronous_commit = local``.

    ./run bench replication [--commits 2000]

Builds a primary and a streaming standby on loopback ports with the machine's PostgreSQL
binaries (``tests/pg_pair.py``, fsync on), then times ``--commits`` single-row INSERT commits
(one connection, as one API request does) each way and prints p50 / p99 / mean per commit.
``synchronous_commit = local`` is asynchronous replication: the primary does not wait for the
standby, and a crash of the primary can lose the last acknowledged commits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos.disk import unique_dir
from tests.pg_pair import PgPair


async def commits(url: str, n: int, mode: str) -> list[float]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"SET synchronous_commit = {mode}")
        await conn.execute("CREATE TABLE IF NOT EXISTS bench (id bigserial, v text)")
        took = []
        for i in range(n):
            started = time.perf_counter()
            await conn.execute("INSERT INTO bench (v) VALUES ($1)", f"row {i}")
            took.append((time.perf_counter() - started) * 1000)
        return took
    finally:
        await conn.close()


def line(name: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p99 = ms[int(len(ms) * 0.99) - 1]
    return (
        f"{name:<34} p50 {statistics.median(ms):6.3f} ms   p99 {p99:6.3f} ms"
        f"   mean {statistics.fmean(ms):6.3f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commits", type=int, default=2000)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    pair = PgPair(unique_dir("nsb"), fsync=True)
    try:
        url = pair.single("primary")
        await commits(url, 200, "on")  # warm-up
        sync = await commits(url, args.commits, "on")
        local = await commits(url, args.commits, "local")
        print(line("synchronous standby (on)", sync))
        print(line("asynchronous (local)", local))
        print(
            f"synchronous replication adds {statistics.median(sync) - statistics.median(local):.3f}"
            " ms to a commit's median"
        )
    finally:
        pair.remove()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
