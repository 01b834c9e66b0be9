"""``GET /api/v1/sync/status`` on a long import ledger: milliseconds per answer.

    ./run bench sync_status [--rows 10000000] [--requests 200] [--keep 100000]

Creates a scratch Request database on ``NETSYNC_BENCH_DATABASE_URL`` (an admin URL, default
``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it to 0006, fills the import
ledger with N rows (``INSERT … SELECT generate_series``), then upgrades to the head: the
migration that fills the per-stream counters from the ledger, timed, as an operator's upgrade
would run it. Then the real Request API (in-process, httpx's ASGI transport, the service token)
answers ``--requests`` status requests; the same answer computed the previous way (a scan of
the ledger) is timed too, for comparison. Then the importer's ledger pruning runs as the daemon
runs it (``importer.daemon.ledger.prune``, ``--keep`` newest rows per stream), timed, and the status
is timed again on the pruned ledger. Drops the database at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
from asgi_lifespan import LifespanManager

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from importer.api import create_app
from importer.config import RequestSettings
from importer.daemon import ledger
from importer.db import make_sessionmaker
from netsync.config import to_libpq_url, with_database
from netsync.db import make_engine
from ops.migrate import upgrade

ADMIN_URL = os.environ.get(
    "NETSYNC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TOKEN = "bench-service-token-" + "x" * 32
#: The previous answer: the last file and the count per stream, from the whole ledger.
_LEDGER_SCAN = """
    SELECT l.stream, l.seq, l.exported_at, c.files, c.applied_at
    FROM import_ledger AS l
    JOIN (SELECT stream, max(seq) AS seq FROM import_ledger GROUP BY stream) AS last
      ON last.stream = l.stream AND last.seq = l.seq
    JOIN (SELECT stream, count(*) AS files, max(applied_at) AS applied_at
          FROM import_ledger GROUP BY stream) AS c ON c.stream = l.stream
    ORDER BY l.stream
"""
_FILL = """
    INSERT INTO import_ledger (stream, seq, file_id, file_name, sha256, key_id, records,
                               applied_changes, exported_at, applied_at)
    SELECT CASE WHEN n % 100 = 0 THEN 'snapshot_settings' ELSE 'changes' END, n,
           md5(n::text)::uuid, 'f', repeat('0', 64), '0123456789abcdef', 1, 1,
           now() - interval '1 second' * (:rows - n), now() - interval '1 second' * (:rows - n)
    FROM generate_series(1, :rows) AS n
"""


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms"


async def _status(client: httpx.AsyncClient, requests: int) -> list[float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        (await client.get("/api/v1/sync/status", headers=headers)).raise_for_status()
        samples.append(time.perf_counter() - started)
    return samples


async def main(rows: int, requests: int, keep: int) -> None:
    name = f"nsbench_status_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(to_libpq_url(ADMIN_URL))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(ADMIN_URL, name)
    try:
        await asyncio.to_thread(upgrade, "request", url, "0006")
        conn = await asyncpg.connect(to_libpq_url(url))
        try:
            started = time.perf_counter()
            await conn.execute(_FILL.replace(":rows", str(int(rows))))
            print(f"filled {rows:,} ledger rows in {time.perf_counter() - started:.1f} s")
            for revision, what in (
                ("0007", "counters from the ledger"),
                ("head", "generations: the ledger's key rebuilt"),
            ):
                started = time.perf_counter()
                await asyncio.to_thread(upgrade, "request", url, revision)
                print(f"migration to {revision} ({what}): {time.perf_counter() - started:.1f} s")
            await conn.execute("ANALYZE")
            scans = []
            for _ in range(5):
                started = time.perf_counter()
                await conn.fetch(_LEDGER_SCAN)
                scans.append(time.perf_counter() - started)
            print(f"previous way (ledger scan, 5 runs): {_ms(scans)}")
        finally:
            await conn.close()
        settings = RequestSettings(
            _env_file=None,
            env="test",
            request_database_url=url,
            request_service_token=TOKEN,
            log_level="WARNING",
        )
        app = create_app(settings)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            LifespanManager(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://request"
            ) as client,
        ):
            answer = await client.get("/api/v1/sync/status", headers=headers)
            answer.raise_for_status()
            files = {s["stream"]: s["files_applied"] for s in answer.json()["streams"]}
            assert sum(files.values()) == rows, files
            samples = await _status(client, requests)
            print(f"GET /api/v1/sync/status, {requests} requests, whole answer: {_ms(samples)}")
            engine = make_engine(url, pool_size=1)
            try:
                started = time.perf_counter()
                removed = await ledger.prune(make_sessionmaker(engine), keep=keep)
                took = time.perf_counter() - started
            finally:
                await engine.dispose()
            print(
                f"ledger pruned to the newest {keep:,} rows per stream: {removed:,} rows in"
                f" {took:.1f} s ({removed / took:,.0f} rows/s, 5,000 per transaction)"
            )
            samples = await _status(client, requests)
            print(f"GET /api/v1/sync/status after pruning: {_ms(samples)}")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--keep", type=int, default=100_000)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.requests, args.keep))
