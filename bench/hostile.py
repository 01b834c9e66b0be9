"""Hostile-file benchmark: what a forged file costs the importer before it is refused.

    ./run bench hostile [--snapshot-mb 1024] [--results-mb 300]

Writes, into a scratch exports directory, files shaped like genuine ones (a real header, a real
row per line) that name a trusted key but carry a signature that is not one: a snapshot of
``--snapshot-mb`` and a results file of ``--results-mb`` (refused by its size at the default
limit, and once more with the limit raised above it, to show the hashing path). Each is refused
by an importer ``scan_once`` in a process of its own, against a scratch Request database on the
server named by ``NETSYNC_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``). Printed per file: the time to refuse it, the
importer's peak RSS growth over its RSS before the scan (``ru_maxrss``), the reason, and the rows
the Request database gained (the quarantine row only: nothing of the file before its signature).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _trailer(key_id: str) -> bytes:
    sig = {"alg": "ed25519-sha256", "key_id": key_id, "sha256": "00" * 32}
    sig["value"] = base64.b64encode(b"\x01" * 64).decode()
    return orjson.dumps({"signature": sig}) + b"\n"


def _forge(path: Path, stream: str, megabytes: int, key_id: str) -> None:
    now = datetime.now(UTC).isoformat()
    head: dict[str, Any] = {
        "format": "netsync-export",
        "version": 1,
        "stream": stream,
        "seq": 1,
        "file_id": str(uuid.uuid4()),
        "created_at": now,
    }
    if stream == "results":
        head["kind"] = "results"
        row: dict[str, Any] = {
            "job_id": f"job:{uuid.uuid4()}",
            "function": "export_settings",
            "queue": "netsync:bulk",
            "status": "complete",
            "tries": 1,
            "enqueued_at": now,
            "started_at": now,
            "finished_at": now,
            "summary": {"records": 1, "note": "x" * 120},
        }
    else:
        head |= {"kind": "snapshot", "entity": "setting", "changes_seq": 0}
        row = {
            "event_id": str(uuid.uuid4()),
            "entity": "setting",
            "entity_id": str(uuid.uuid4()),
            "version": 1,
            "op": "upsert",
            "occurred_at": now,
            "data": {"key": "forged.key", "value": "x" * 150},
        }
    line = orjson.dumps(row) + b"\n"
    block = line * ((1 << 20) // len(line))
    head["records"] = (1 << 20) // len(line) * megabytes
    with path.open("wb") as fh:
        fh.write(orjson.dumps(head) + b"\n")
        for _ in range(megabytes):
            fh.write(block)
        fh.write(_trailer(key_id))


async def _refuse(
    url: str, exports: Path, trusted: Path, overrides: dict[str, Any]
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
        trusted_keys_dir=trusted,
        **overrides,
    )
    engine = make_engine(url, pool_size=2)
    importer = Importer(settings, make_sessionmaker(engine), Keyring.from_sources(trusted))
    importer.prepare()
    async with engine.connect():  # the pool's first connection is part of the baseline
        pass
    before = max(_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    started = time.perf_counter()
    result = await importer.scan_once()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    await engine.dispose()
    return {"seconds": seconds, "growth_mb": peak - before, "quarantined": result.quarantined}


async def _sql(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--snapshot-mb", type=int, default=1024)
    parser.add_argument("--results-mb", type=int, default=300)
    args = parser.parse_args()
    from exchange.signing import Signer, write_key_pair
    from netsync.config import with_database
    from ops.migrate import upgrade

    admin = os.environ.get(
        "NETSYNC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"nsbench_{uuid.uuid4().hex[:8]}_request"
    asyncio.run(_sql(admin, f'CREATE DATABASE "{name}"'))
    cases = [
        ("snapshot_settings", args.snapshot_mb, {}),
        ("results", args.results_mb, {}),
        ("results", args.results_mb, {"max_results_bytes": (args.results_mb + 16) << 20}),
    ]
    try:
        url = with_database(admin, name)
        upgrade("request", url)
        with tempfile.TemporaryDirectory(prefix="nsbench-") as tmp:
            root = Path(tmp)
            signer = Signer.generate()
            write_key_pair(signer, root / "signing.pem", root / "trusted")
            print(f"load before: {os.getloadavg()[0]:.2f} (1-min), {os.cpu_count()} CPUs")
            for stream, megabytes, overrides in cases:
                exports = root / "exports"
                exports.mkdir(exist_ok=True)
                _forge(exports / f"{stream}-000000000001.jsonl", stream, megabytes, signer.key_id)
                rows_before = asyncio.run(_sql(url, "SELECT count(*) FROM quarantined_files"))
                argv = [url, str(exports), str(root / "trusted"), json.dumps(overrides)]
                out = subprocess.run(
                    [sys.executable, __file__, "--side", *argv],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                reason = asyncio.run(
                    _sql(url, "SELECT reason FROM quarantined_files ORDER BY id DESC LIMIT 1")
                )
                ledger = asyncio.run(_sql(url, "SELECT count(*) FROM import_ledger"))
                added = asyncio.run(_sql(url, "SELECT count(*) FROM quarantined_files"))
                limit = (
                    f" (limit raised to {overrides['max_results_bytes'] >> 20} MiB)"
                    if (overrides)
                    else ""
                )
                print(
                    f"{stream} {megabytes} MB forged{limit}: refused in {result['seconds']:.2f} s"
                    f" ({result['seconds'] / (megabytes / 1024):.2f} s/GB) as {reason},"
                    f" peak RSS growth {result['growth_mb']:.1f} MB,"
                    f" ledger rows {ledger}, quarantine rows +{added - rows_before}"
                )
    finally:
        asyncio.run(_sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--side":
        url, exports, trusted, overrides = sys.argv[2:6]
        result = asyncio.run(_refuse(url, Path(exports), Path(trusted), json.loads(overrides)))
        print(json.dumps(result))
    else:
        main()
