"""End-to-end sync latency against a running system (``./run up`` in another terminal).

Changes one user's password ``--count`` times through the Response API, one after another, and
measures, for each change, the time from the API's response to the commit of that change in the
Request database. The commit is observed exactly: the importer sends ``NOTIFY netsync_applied``
inside the applying transaction, and PostgreSQL delivers it at commit. Hashing time (argon2id,
in this process) is measured separately, since it happens before the response.

    ./run bench e2e_latency [--count 200] [--api http://127.0.0.1:8000]

Configuration comes from the same places as the system's: ``NETSYNC_REQUEST_DATABASE_URL`` (or
``.netsync/embedded.env`` written by ``./run up``) and ``NETSYNC_ADMIN_PASSWORD`` (or
``.netsync/admin-password``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
import uuid

import asyncpg
import httpx

from bench.running import add_request_db, admin_password
from netsync.config import to_libpq_url
from netsync.passwords import hash_password_sync


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run(api: str, request_db: str, admin_password: str, count: int) -> None:
    received: dict[str, float] = {}
    arrival = asyncio.Event()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        now = time.time()
        for event in json.loads(payload).get("events", []):
            received[event] = now
        arrival.set()

    listener = await asyncpg.connect(to_libpq_url(request_db))
    await listener.add_listener("netsync_applied", on_notify)
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        auth = await client.post(
            "/api/v1/auth/token", data={"username": "admin", "password": admin_password}
        )
        auth.raise_for_status()
        headers = {"Authorization": f"Bearer {auth.json()['access_token']}"}
        name = f"latency-{uuid.uuid4().hex[:8]}"
        user = await client.post(
            "/api/v1/users",
            json={"username": name, "password": "benchmark pass phrase 0"},
            headers=headers,
        )
        user.raise_for_status()
        url = f"/api/v1/users/{user.json()['id']}/reset-password"
        await asyncio.sleep(1)  # let the creation settle

        sent: dict[str, float] = {}
        round_trips: list[float] = []
        for i in range(count):
            start = time.time()
            response = await client.post(
                url, json={"new_password": f"benchmark pass phrase {i + 1}"}, headers=headers
            )
            done = time.time()
            response.raise_for_status()
            event = response.json()["sync_job_id"].removeprefix("sync:")
            sent[event] = done
            round_trips.append((done - start) * 1000)
            deadline = time.monotonic() + 10
            while event not in received and time.monotonic() < deadline:
                arrival.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrival.wait(), deadline - time.monotonic())
    await listener.close()

    lost = [e for e in sent if e not in received]
    latencies = [(received[e] - t) * 1000 for e, t in sent.items() if e in received]
    hashing = []
    for _ in range(20):
        start = time.perf_counter()
        hash_password_sync("benchmark pass phrase")
        hashing.append((time.perf_counter() - start) * 1000)

    print(f"changes: {count}, arrived: {len(latencies)}, not arrived within 10 s: {len(lost)}")
    print("API response -> committed in the Request DB (ms):")
    print(
        f"  p50 {pct(latencies, 50):.1f}  p95 {pct(latencies, 95):.1f}  "
        f"p99 {pct(latencies, 99):.1f}  max {max(latencies):.1f}  "
        f"mean {statistics.fmean(latencies):.1f}"
    )
    print(
        f"API round trip, hashing included (ms): p50 {pct(round_trips, 50):.1f}  "
        f"p99 {pct(round_trips, 99):.1f}"
    )
    print(f"argon2id hash alone (ms): p50 {pct(hashing, 50):.1f}  max {max(hashing):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    add_request_db(parser)
    args = parser.parse_args()
    password = admin_password(parser, args.request_db)
    asyncio.run(run(args.api, args.request_db, password, args.count))


if __name__ == "__main__":
    main()
