"""Users of the previous deployment imported with their bcrypt hashes, end to end: from the
first byte of ``POST /api/v1/users/import`` to the last of them committed in the Request
database (every one of them then able to sign in there), against a running system (``./run up``
in another terminal).

    ./run bench users_import [--users 100000] [--api http://127.0.0.1:8000]

Prints the import's own time (rows upserted with their outbox rows), the time until the Request
database holds every user, rows per second for both, and a sign-in on the Request API with an
imported password. Configuration as ``bench/e2e_latency.py`` (``.netsync/embedded.env`` and
``.netsync/admin-password`` from ``./run up``, or the environment); the Request API is looked
for at ``--request-api``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import bcrypt
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.running import add_request_db, admin_password, users_arrived
from netsync.config import to_libpq_url

PASSWORDS = [f"benchmark import phrase {i}" for i in range(16)]


def body(prefix: str, n: int) -> bytes:
    # cost 12, as the previous deployment's: the import never recomputes them
    hashes = [bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=12)).decode() for p in PASSWORDS]
    return b"".join(
        orjson.dumps(
            {
                "username": f"{prefix}{i:07d}",
                "email": f"{prefix}{i:07d}@example.org",
                "password_hash": hashes[i % len(hashes)],
            }
        )
        + b"\n"
        for i in range(n)
    )


async def run(api: str, request_api: str, request_db: str, password: str, n: int) -> None:
    prefix = f"imp{uuid.uuid4().hex[:6]}"
    data = body(prefix, n)
    print(f"load average before: {os.getloadavg()[0]:.2f}; {n} users, {len(data) / 1e6:.1f} MB")
    conn = await asyncpg.connect(to_libpq_url(request_db))
    async with httpx.AsyncClient(base_url=api, timeout=600) as client:
        auth = await client.post(
            "/api/v1/auth/token", data={"username": "admin", "password": password}
        )
        auth.raise_for_status()
        headers = {
            "Authorization": f"Bearer {auth.json()['access_token']}",
            "Content-Type": "application/x-ndjson",
        }
        started = time.perf_counter()
        answer = await client.post("/api/v1/users/import", content=data, headers=headers)
        imported = time.perf_counter() - started
        answer.raise_for_status()
        summary = answer.json()
        count = await users_arrived(conn, prefix, n, started)
        applied = time.perf_counter() - started
        login = await client.post(
            f"{request_api}/api/v1/auth/login",
            json={"username": f"{prefix}{n - 1:07d}", "password": PASSWORDS[(n - 1) % 16]},
        )
    await conn.close()
    print(
        f"import answered in {imported:.2f} s ({n / imported:,.0f} users/s): {summary['created']}"
        f" created, {summary['failed']} refused"
    )
    print(f"all {count} on the Request side after {applied:.2f} s ({n / applied:,.0f} users/s)")
    print(f"the last one signs in on the Request API: {login.status_code == 200}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    parser.add_argument("--request-api", default="http://127.0.0.1:8001")
    add_request_db(parser)
    args = parser.parse_args()
    password = admin_password(parser, args.request_db)
    asyncio.run(run(args.api, args.request_api, args.request_db, password, args.users))


if __name__ == "__main__":
    main()
