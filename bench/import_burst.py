"""How fast the importer applies a burst: 10,000 one-change files, and 100,000 changes (100 files
of 1,000 records each). Prints files/s and changes/s for each.

Runs the real ``Importer`` (the daemon's scan, batching, archiving and ledger) against a scratch
Request database it creates, migrates and drops on ``NETSYNC_BENCH_DATABASE_URL`` (an admin URL,
default ``postgresql://postgres@127.0.0.1:5432/postgres``), with its own temporary exports
directory and keys. Files are written before the clock starts; the clock covers reading,
verifying, applying and archiving every file. Usage: ``./run bench import_burst [--log-level X]
[--plaintext] [--compare ROUNDS]``; ``--compare`` alternates sealed and plaintext bursts in one
process and database and prints the cost of sealing (medians).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from exchange.sealing import Recipients, generate_identity, write_identity
from exchange.signing import Keyring, Signer, write_key_pair
from exchange.writer import publish_export
from importer.config import RequestSettings
from importer.daemon.loop import Importer
from importer.db import make_sessionmaker
from netsync.config import with_database
from netsync.db import make_engine
from netsync.heap import counting_pauses, freeze
from netsync.logging import configure_logging
from ops.migrate import upgrade

ADMIN_URL = os.environ.get(
    "NETSYNC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$YmVuY2gtaGFzaC1oYXNoLWhhc2g"


def record(user: uuid.UUID, version: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "entity": "user",
        "entity_id": str(user),
        "version": version,
        "op": "upsert",
        "occurred_at": datetime.now(UTC).isoformat(),
        "data": {
            "username": f"user-{user.hex[:10]}",
            "password_hash": HASH,
            "role": "user",
            "is_active": True,
        },
    }


def write_files(
    exports: Path,
    signer: Signer,
    recipients: Recipients | None,
    files: int,
    per_file: int,
    first_seq: int,
) -> int:
    users = [uuid.uuid4() for _ in range(min(per_file * files, 50_000))]
    n = 0
    for i in range(files):
        records = []
        for _ in range(per_file):
            records.append(record(users[n % len(users)], first_seq + n))
            n += 1
        publish_export(
            exports,
            signer,
            recipients=recipients,
            stream="changes",
            seq=first_seq + i,
            kind="changes",
            file_id=uuid.uuid4(),
            created_at=datetime.now(UTC),
            records=records,
        )
    return n


async def scenario(
    importer: Importer,
    exports: Path,
    signer: Signer,
    recipients: Recipients | None,
    files: int,
    per: int,
    seq: int,
) -> float:
    """Apply ``files`` files of ``per`` records; print and return the seconds it took."""
    changes = write_files(exports, signer, recipients, files, per, seq)
    started = time.perf_counter()
    applied = 0
    with counting_pauses() as pauses:
        while applied < files:
            result = await importer.scan_once()
            applied += result.applied
            if result.applied == 0 and result.quarantined:
                raise SystemExit("files were quarantined: the benchmark is broken")
    elapsed = time.perf_counter() - started
    print(
        f"{files:>6} files x {per:>5} records: {elapsed:6.2f} s  "
        f"{files / elapsed:9,.0f} files/s  {changes / elapsed:9,.0f} changes/s"
        f"{'  (plaintext)' if recipients is None else ''}"
    )
    print(f"{'':>8}{pauses}")
    return elapsed


async def compare(
    importer: Importer, exports: Path, signer: Signer, recipients: Recipients, rounds: int
) -> None:
    """The cost of sealing in one process and database: sealed and plaintext bursts of each
    shape alternate (the order flips every round), so both meet the same machine."""
    seq = 1
    for files, per in ((10_000, 1), (100, 1_000)):
        taken: dict[str, list[float]] = {"sealed": [], "plaintext": []}
        for round_ in range(rounds):
            order = ["sealed", "plaintext"] if round_ % 2 == 0 else ["plaintext", "sealed"]
            for mode in order:
                sealing = recipients if mode == "sealed" else None
                taken[mode].append(
                    await scenario(importer, exports, signer, sealing, files, per, seq)
                )
                seq += files
        sealed, plain = statistics.median(taken["sealed"]), statistics.median(taken["plaintext"])
        change = 100 * (plain / sealed - 1)  # throughput: sealed against plaintext
        print(
            f"{files:>6} x {per:>5}, median of {rounds}: sealed {files * per / sealed:,.0f}"
            f" changes/s, plaintext {files * per / plain:,.0f} changes/s:"
            f" sealed throughput {change:+.1f} %"
        )


async def main(log_level: str, plaintext: bool, rounds: int = 0) -> None:
    name = f"bench_import_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    root = Path(tempfile.mkdtemp(prefix="netsync-bench-"))
    url = with_database(ADMIN_URL, name)
    engine = None
    try:
        await asyncio.to_thread(upgrade, "request", url)
        signer = Signer.generate()
        write_key_pair(signer, root / "signing.pem", root / "trusted")
        identity, recipient = generate_identity()
        write_identity(root / "decryption", identity, recipient)
        recipients = None if plaintext else Recipients.of([recipient])
        exports = root / "exports"
        exports.mkdir()
        settings = RequestSettings(
            _env_file=None,
            env="test",
            state_dir=root,
            exports_dir=exports,
            request_database_url=url,
            trusted_keys_dir=root / "trusted",
            decryption_keys_dir=root / "decryption",
            accept_plaintext=plaintext or rounds > 0,
            log_level=log_level,
        )
        configure_logging("bench", level=log_level, fmt="json")
        engine = make_engine(url, pool_size=2, pre_ping=False)  # as the daemon's
        keyring = Keyring.from_sources(settings.trusted_keys_path)
        importer = Importer(settings, make_sessionmaker(engine), keyring)
        importer.prepare()
        freeze()  # as the daemon does once it has started
        print(
            f"batches of up to {settings.batch_max_files} files / "
            f"{settings.batch_max_records} records, log level {log_level},"
            f" {'plaintext (version 1)' if plaintext else 'sealed'} files"
        )
        if rounds:
            await compare(importer, exports, signer, Recipients.of([recipient]), rounds)
        else:
            await scenario(importer, exports, signer, recipients, 10_000, 1, 1)
            await scenario(importer, exports, signer, recipients, 100, 1_000, 10_001)
    finally:
        if engine is not None:
            await engine.dispose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="INFO logs one line per applied change (to stderr); the default measures without",
    )
    parser.add_argument(
        "--plaintext", action="store_true", help="unsealed (version 1) files: the cost of sealing"
    )
    parser.add_argument(
        "--compare",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="sealed and plaintext bursts alternated ROUNDS times each: the cost of sealing",
    )
    args = parser.parse_args()
    logging.getLogger().setLevel(args.log_level)
    asyncio.run(main(args.log_level, args.plaintext, args.compare))
