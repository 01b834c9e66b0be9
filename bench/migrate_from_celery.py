"""The previous deployment moved over in one command, end to end: ``netsync migrate-from-celery``
reading a database shaped as the old one (profile types, settings, users with cost-12 bcrypt
hashes), until the Request database holds every user, against a running system (``./run up`` in
another terminal).

    ./run bench migrate_from_celery [--users 100000] [--settings 1000] [--server URL]

The old database is made on ``--server`` (the machine's PostgreSQL by default) and dropped
afterwards. Prints the command's own time (rows read, checked and upserted with their outbox
rows), the time until the Request database holds every user, and a sign-in there with an old
password. Configuration as ``bench/users_import.py``.
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
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.running import add_request_db, embedded, users_arrived
from netsync.config import to_libpq_url, with_database

PASSWORDS = [f"old deployment phrase {i}" for i in range(16)]
NETSYNC = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "netsync"


async def make_legacy(url: str, prefix: str, users: int, settings: int) -> None:
    hashes = [bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=12)).decode() for p in PASSWORDS]
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """
            CREATE TABLE profile_types (id serial PRIMARY KEY, name varchar(100) UNIQUE,
                description text, permissions jsonb NOT NULL DEFAULT '[]');
            CREATE TABLE settings (id serial PRIMARY KEY, key varchar(200) UNIQUE,
                value jsonb NOT NULL);
            CREATE TABLE users (id serial PRIMARY KEY, username varchar(50) UNIQUE,
                email varchar(255), hashed_password varchar(255) NOT NULL,
                is_active boolean NOT NULL DEFAULT true,
                is_superuser boolean NOT NULL DEFAULT false, profile_type_id integer);
            """
        )
        await conn.execute(
            "INSERT INTO profile_types (name, permissions)"
            " SELECT $1 || '-type-' || g, '[\"users:read\"]' FROM generate_series(1, 20) g",
            prefix,
        )
        await conn.execute(
            "INSERT INTO settings (key, value) SELECT $1 || '.key_' || g, to_jsonb(g)"
            " FROM generate_series(1, $2) g",
            prefix,
            settings,
        )
        await conn.execute(
            "INSERT INTO users (username, email, hashed_password, profile_type_id)"
            " SELECT $1 || lpad(g::text, 7, '0'), $1 || g || '@example.org',"
            " ($3::text[])[1 + g % 16], 1 + g % 20 FROM generate_series(0, $2 - 1) g",
            prefix,
            users,
            hashes,
        )
    finally:
        await conn.close()


async def run(server: str, request_db: str, users: int, settings: int) -> None:
    prefix = f"mig{uuid.uuid4().hex[:6]}"
    name = f"netsync_bench_{prefix}"
    admin = await asyncpg.connect(to_libpq_url(server))
    await admin.execute(f'CREATE DATABASE "{name}"')
    legacy = with_database(to_libpq_url(server), name)
    try:
        await make_legacy(legacy, prefix, users, settings)
        print(
            f"load average before: {os.getloadavg()[0]:.2f}; {users} users, {settings} settings,"
            " 20 profile types"
        )
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            str(NETSYNC),
            "migrate-from-celery",
            "--json",
            env={**os.environ, "NETSYNC_CELERY_DATABASE_URL": legacy},
            stdout=asyncio.subprocess.PIPE,
        )
        stdout, _ = await proc.communicate()
        migrated = time.perf_counter() - started
        result = orjson.loads(stdout)
        conn = await asyncpg.connect(to_libpq_url(request_db))
        try:
            count = await users_arrived(conn, prefix, users, started)
            applied = time.perf_counter() - started
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    created = {t: v["created"] for t, v in result["tables"].items()}
    print(f"migrate-from-celery exited {proc.returncode} after {migrated:.2f} s: created {created}")
    print(f"all {count} users on the Request side after {applied:.2f} s ({users / applied:,.0f}/s)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--settings", type=int, default=1_000)
    parser.add_argument(
        "--server",
        default=embedded("NETSYNC_DATABASE_URL")
        or os.environ.get("NETSYNC_DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server to make the old database on (an administrator's URL)",
    )
    add_request_db(parser)
    args = parser.parse_args()
    if not args.request_db:
        parser.error("set NETSYNC_REQUEST_DATABASE_URL (or ./run up)")
    server = with_database(to_libpq_url(args.server), "postgres")
    asyncio.run(run(server, args.request_db, args.users, args.settings))


if __name__ == "__main__":
    main()
