"""Snapshot benchmark: export and import 1,000,000 settings; seconds and peak RSS of each side.

    ./run bench snapshot [--rows N] [--users N] [--verify] [--plaintext] [--export-only]

Creates two scratch databases on the server named by ``NETSYNC_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``), fills the Response one with N settings and
``--users`` users (``INSERT … SELECT generate_series``), then runs each side in a process of its
own so that its ``ru_maxrss`` is its own peak: the bulk worker's ``export_snapshot`` of every
filled entity type (and profile types), and the importer's ``scan_once`` (streaming read, COPY,
merge) into the empty Request database: a new Request site joining. ``--verify`` then compares
both databases entity by entity as ``netsync verify`` does. Drops everything at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from netsync.heap import counting_pauses, freeze  # noqa: E402 - after the path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _export(
    url: str, exports: Path, keys: Path, plaintext: bool, entities: list[str]
) -> dict[str, Any]:
    from app.db import make_sessionmaker
    from exchange.signing import Signer
    from jobs.snapshots import export_snapshot
    from netsync.db import make_engine

    engine = make_engine(url)
    from exchange.sealing import Recipients

    signer = Signer.from_pem((keys / "signing.pem").read_bytes())
    recipients = None if plaintext else Recipients.from_sources(keys / "recipients")
    each: dict[str, float] = {}
    records = size = 0
    freeze()  # as the worker does once it has started
    with counting_pauses() as pauses:
        for entity in entities:
            started = time.perf_counter()
            done = await export_snapshot(
                engine, make_sessionmaker(engine), exports, signer, entity, recipients=recipients
            )
            each[entity] = time.perf_counter() - started
            records += done.records
            size += done.bytes
    await engine.dispose()
    return {
        "seconds": sum(each.values()),
        "each": each,
        "records": records,
        "bytes": size,
        "pauses": str(pauses),
    }


async def _import(
    url: str, exports: Path, keys: Path, plaintext: bool, entities: list[str]
) -> dict[str, Any]:
    from exchange.signing import Keyring
    from importer.config import RequestSettings
    from importer.daemon.loop import Importer
    from importer.db import make_sessionmaker
    from netsync.db import make_engine

    settings = RequestSettings(
        _env_file=None,
        env="test",
        state_dir=exports.parent / "state",
        exports_dir=exports,
        request_database_url=url,
        trusted_keys_dir=keys / "trusted",
        decryption_keys_dir=keys / "decryption",
        accept_plaintext=plaintext,
    )
    engine = make_engine(url, pool_size=2, pre_ping=False)  # as the daemon's
    keyring = Keyring.from_sources(keys / "trusted")
    importer = Importer(settings, make_sessionmaker(engine), keyring)
    importer.prepare()
    freeze()  # as the daemon does once it has started
    started = time.perf_counter()
    with counting_pauses() as pauses:
        result = await importer.scan_once()
    seconds = time.perf_counter() - started
    await engine.dispose()
    return {
        "seconds": seconds,
        "applied": result.applied,
        "changes": result.changes,
        "pauses": str(pauses),
    }


def _side(argv: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *argv], check=True, capture_output=True, text=True, cwd=ROOT
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


#: A bcrypt hash as the previous deployment's users have them (the same for all: the hash's
#: bytes, not its strength, are what the bench moves).
_HASH = "$2b$12$" + "R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"


async def _fill(url: str, rows: int, users: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO settings (id, key, value, description, version)"
            " SELECT gen_random_uuid(), 'bench.key_' || g, to_jsonb(g),"
            " CASE WHEN g % 3 = 0 THEN 'setting number ' || g END, 1 + g % 5"
            " FROM generate_series(1, $1) AS g",
            rows,
        )
        await conn.execute(
            "INSERT INTO users (id, username, email, password_hash, role, is_active, version)"
            " SELECT gen_random_uuid(), 'user' || g, 'user' || g || '@example.org', $2,"
            " 'user', g % 50 <> 0, 1 + g % 3"
            " FROM generate_series(1, $1) AS g",
            users,
            _HASH,
        )
        await conn.execute("ANALYZE settings")
        await conn.execute("ANALYZE users")
    finally:
        await conn.close()


async def _verify(response_url: str, request_url: str) -> tuple[float, int]:
    from netsync.db import make_engine
    from ops.cli.verify import ENTITIES, compare_entity

    response, request = make_engine(response_url), make_engine(request_url)
    started = time.perf_counter()
    try:
        drift = [
            d
            for entity in ENTITIES
            for d in await compare_entity(entity, response, request, lambda n: None)
        ]
    finally:
        await response.dispose()
        await request.dispose()
    return time.perf_counter() - started, len(drift)


async def _admin(admin: str, sql: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=0, help="users to fill and snapshot too")
    parser.add_argument("--verify", action="store_true", help="compare both sides afterwards")
    parser.add_argument(
        "--plaintext", action="store_true", help="unsealed (version 1) files: the cost of sealing"
    )
    parser.add_argument(
        "--export-only", action="store_true", help="export, then drop: no import, no verify"
    )
    args = parser.parse_args()
    from exchange.sealing import generate_identity, write_identity, write_recipient
    from exchange.signing import Signer, write_key_pair
    from netsync.config import with_database
    from ops.migrate import upgrade

    admin = os.environ.get(
        "NETSYNC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    run = uuid.uuid4().hex[:8]
    names = {"response": f"nsbench_{run}_response", "request": f"nsbench_{run}_request"}
    for name in names.values():
        asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        with tempfile.TemporaryDirectory(prefix="nsbench-") as tmp:
            root = Path(tmp)
            exports = root / "exports"
            exports.mkdir()
            write_key_pair(Signer.generate(), root / "signing.pem", root / "trusted")
            identity, recipient = generate_identity()
            write_identity(root / "decryption", identity, recipient)
            write_recipient(root / "recipients", recipient)
            mode = ["plaintext"] if args.plaintext else ["sealed"]
            resp, req = (
                with_database(admin, names["response"]),
                with_database(admin, names["request"]),
            )
            upgrade("response", resp)
            upgrade("request", req)
            started = time.perf_counter()
            asyncio.run(_fill(resp, args.rows, args.users))
            print(
                f"filled {args.rows:,} settings and {args.users:,} users"
                f" in {time.perf_counter() - started:.1f} s"
            )
            # settings alone (the 1 M-row figure), or a whole new site: every entity type
            entities = "setting" if not args.users else "setting,user,profile_type"
            sides = [str(exports), str(root), *mode, entities]
            out = _side(["--side", "export", resp, *sides])
            each = ", ".join(f"{e} {s:.2f} s" for e, s in out["each"].items())
            print(
                f"export ({mode[0]}): {out['seconds']:.2f} s ({each}),"
                f" peak RSS {out['peak_mb']:.0f} MB"
                f" (sealing child {out['child_peak_mb']:.0f} MB),"
                f" CPU {out['cpu_s']:.2f} s (sealing child {out['child_cpu_s']:.2f} s),"
                f" {out['records']:,} records, {out['bytes'] / 1e6:.0f} MB of files;"
                f" {out['pauses']}"
            )
            if args.export_only:
                return
            out = _side(["--side", "import", req, *sides])
            print(
                f"import: {out['seconds']:.2f} s, peak RSS {out['peak_mb']:.0f} MB,"
                f" {out['changes']:,} rows written; {out['pauses']}"
            )
            if args.verify:
                seconds, drift = asyncio.run(_verify(resp, req))
                print(f"verify: {drift} entities differ ({seconds:.1f} s to compare)")
    finally:
        for name in names.values():
            asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--side":
        side, url, exports, keys, mode, entities = sys.argv[2:8]
        run_side = _export if side == "export" else _import
        result = asyncio.run(
            run_side(url, Path(exports), Path(keys), mode == "plaintext", entities.split(","))
        )
        own, kids = (
            resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        cpu = {"cpu_s": own.ru_utime + own.ru_stime, "child_cpu_s": kids.ru_utime + kids.ru_stime}
        print(
            json.dumps(
                {**result, **cpu, "peak_mb": _peak_mb(), "child_peak_mb": kids.ru_maxrss / 1024}
            )
        )
    else:
        main()
