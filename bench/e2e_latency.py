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
import itertools
import json
import os
import statistics
import time
import uuid

import asyncpg
import httpx

from bench.running import add_request_db, admin_password, embedded
from netsync.config import to_libpq_url
from netsync.passwords import hash_password_sync


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def hops(
    response_db: str, request_db: str, sent: dict[str, float], received: dict[str, float]
) -> dict[str, list[float]]:
    """Where each change's time went, from the timestamps both databases keep: the API's answer,
    the relay's allocation of its file (``export_files.created_at``), the file published
    (``published_at``), the importer's applying transaction (``import_ledger.applied_at``), and
    its commit (the ``NOTIFY``)."""
    ids = [uuid.UUID(e) for e in sent if e in received]
    response = await asyncpg.connect(to_libpq_url(response_db))
    try:
        files = await response.fetch(
            "SELECT o.event_id, f.seq, f.created_at, f.published_at FROM outbox_events o"
            " JOIN export_files f ON f.stream = o.export_stream AND f.seq = o.export_seq"
            " WHERE o.event_id = ANY($1::uuid[])",
            ids,
        )
    finally:
        await response.close()
    request = await asyncpg.connect(to_libpq_url(request_db))
    try:
        applied = {
            r["seq"]: r["applied_at"].timestamp()
            for r in await request.fetch(
                "SELECT seq, applied_at FROM import_ledger WHERE stream = 'changes'"
                " AND seq = ANY($1::bigint[])",
                [r["seq"] for r in files],
            )
        }
    finally:
        await request.close()
    out: dict[str, list[float]] = {
        "answer -> file allocated (enqueue, worker wake-up, job start)": [],
        "allocated -> published (write, sign, seal, fsync, mark)": [],
        "published -> applying (file event, read, verify, unseal)": [],
        "applying -> committed (claim, upsert, commit)": [],
    }
    for r in files:
        event = str(r["event_id"])
        if r["published_at"] is None or r["seq"] not in applied:
            continue
        marks = [
            sent[event],
            r["created_at"].timestamp(),
            r["published_at"].timestamp(),
            applied[r["seq"]],
            received[event],
        ]
        for values, (a, b) in zip(out.values(), itertools.pairwise(marks), strict=True):
            values.append((b - a) * 1000)
    return out


async def run(
    api: str, request_db: str, response_db: str | None, admin_password: str, count: int
) -> None:
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
    if response_db:
        print("where the time goes, per change (ms):")
        for label, values in (await hops(response_db, request_db, sent, received)).items():
            if values:
                print(f"  {label}: p50 {pct(values, 50):.2f}  p99 {pct(values, 99):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    add_request_db(parser)
    parser.add_argument(
        "--response-db",
        default=os.environ.get("NETSYNC_RESPONSE_DATABASE_URL")
        or embedded("NETSYNC_RESPONSE_DATABASE_URL"),
        help="for the breakdown per hop (optional)",
    )
    args = parser.parse_args()
    password = admin_password(parser, args.request_db)
    asyncio.run(run(args.api, args.request_db, args.response_db, password, args.count))


if __name__ == "__main__":
    main()
