"""The importer's core promises, with files built by the real writer: each genuine file is
applied exactly once, an older change never overwrites a newer one, and a file that is tampered
with, signed by a stranger or half-written is never applied."""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import UTC, datetime
from typing import Any

from exchange.format import STAGING_DIRNAME
from exchange.signing import Signer
from exchange.writer import PublishedFile, publish_export
from importer.daemon.loop import Importer
from tests.importer import files
from tests.support import Sandbox, eventually

HASH_V1 = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$djEtaGFzaC1oYXNoLWhhc2g"
HASH_V2 = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$djItaGFzaC1oYXNoLWhhc2g"


def publish(
    sandbox: Sandbox, seq: int, *records: dict[str, Any], signer: Signer | None = None
) -> PublishedFile:
    return files.publish(sandbox.exports, signer or sandbox.signer, seq, *records)


fetch = files.query


async def user_state(sandbox: Sandbox, user_id: uuid.UUID) -> tuple[int, str] | None:
    rows = await fetch(
        sandbox, "SELECT version, password_hash FROM synced_users WHERE id = $1", user_id
    )
    return (rows[0]["version"], rows[0]["password_hash"]) if rows else None


async def ledger_count(sandbox: Sandbox) -> int:
    rows = await fetch(sandbox, "SELECT count(*) AS n FROM import_ledger")
    return int(rows[0]["n"])


async def quarantined(sandbox: Sandbox) -> list[tuple[str, str]]:
    rows = await fetch(sandbox, "SELECT file_name, reason FROM quarantined_files ORDER BY id")
    return [(r["file_name"], r["reason"]) for r in rows]


async def test_the_same_file_seen_twice_is_applied_once(
    sandbox: Sandbox, importer: Importer
) -> None:
    uid = uuid.uuid4()
    published = publish(sandbox, 1, files.user_record(uid, 1, password_hash=HASH_V1))
    copy = sandbox.root / "copy.jsonl"
    shutil.copy(published.path, copy)
    await eventually(lambda: user_state(sandbox, uid))
    await eventually(lambda: not published.path.exists())

    # the same file arrives again (a replay, or a producer that published it twice)
    shutil.copy(copy, published.path)
    await eventually(lambda: not published.path.exists())
    assert await ledger_count(sandbox) == 1
    assert await user_state(sandbox, uid) == (1, HASH_V1)
    # the archive holds it once: a replay is not another copy (a flood of replays costs no disk)
    assert sorted(os.listdir(importer.archive_dir)) == [published.name]


async def test_an_older_change_arriving_after_a_newer_one_changes_nothing(
    sandbox: Sandbox, importer: Importer
) -> None:
    uid = uuid.uuid4()
    publish(sandbox, 2, files.user_record(uid, 2, password_hash=HASH_V2))
    await eventually(lambda: user_state(sandbox, uid))
    publish(sandbox, 1, files.user_record(uid, 1, password_hash=HASH_V1))
    await eventually(lambda: ledger_count(sandbox), timeout=5)

    async def both_applied() -> bool:
        return await ledger_count(sandbox) == 2

    await eventually(both_applied)
    assert await user_state(sandbox, uid) == (2, HASH_V2)


async def test_tampered_and_impostor_files_are_quarantined_and_the_daemon_goes_on(
    sandbox: Sandbox, importer: Importer
) -> None:
    victim = uuid.uuid4()
    publish(sandbox, 1, files.user_record(victim, 1, password_hash=HASH_V1))
    await eventually(lambda: user_state(sandbox, victim))

    staged = sandbox.root / "staged"
    staged.mkdir()
    forged = publish_export(
        staged,
        sandbox.signer,
        recipients=sandbox.recipients,
        stream="changes",
        seq=2,
        kind="changes",
        file_id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        records=[files.user_record(victim, 2, password_hash=HASH_V1)],
    )
    data = bytearray(forged.path.read_bytes())
    assert HASH_V1.encode() not in data  # sealed: the hash is nowhere in clear to swap
    data[data.index(b"\n") + 200] ^= 1  # so a bit of the ciphertext is flipped instead
    (sandbox.exports / forged.name).write_bytes(data)
    impostor = publish(
        sandbox, 3, files.user_record(victim, 3, password_hash=HASH_V2), signer=Signer.generate()
    )

    async def both_quarantined() -> list[tuple[str, str]] | None:
        found = await quarantined(sandbox)
        return found if len(found) == 2 else None

    assert await eventually(both_quarantined) == [
        (forged.name, "bad_signature"),
        (impostor.name, "unknown_key"),
    ]
    assert await user_state(sandbox, victim) == (1, HASH_V1)
    for name in (forged.name, impostor.name):
        assert (importer.quarantine_dir / name).exists()
        assert (importer.quarantine_dir / f"{name}.reason.json").exists()

    genuine = publish(sandbox, 4, files.user_record(victim, 4, password_hash=HASH_V2))
    await eventually(lambda: not genuine.path.exists())
    assert await user_state(sandbox, victim) == (4, HASH_V2)


async def test_half_written_files_are_never_applied(sandbox: Sandbox, importer: Importer) -> None:
    uid = uuid.uuid4()
    staging = sandbox.exports / STAGING_DIRNAME
    staging.mkdir(exist_ok=True)
    complete = publish_export(
        sandbox.root,
        sandbox.signer,
        recipients=sandbox.recipients,
        stream="changes",
        seq=1,
        kind="changes",
        file_id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        records=[files.user_record(uid, 1, password_hash=HASH_V1)],
    ).path.read_bytes()
    # A writer that crashed mid-write leaves a partial file in staging: never looked at.
    (staging / "changes-000000000001.jsonl.0123.tmp").write_bytes(complete[: len(complete) // 2])
    # A copy tool that writes in place (rsync --inplace) exposes a partial file under a final
    # name: it fails verification and is quarantined, never applied.
    (sandbox.exports / "changes-000000000001.jsonl").write_bytes(complete[: len(complete) // 2])

    async def one_quarantined() -> list[tuple[str, str]] | None:
        found = await quarantined(sandbox)
        return found or None

    assert await eventually(one_quarantined) == [("changes-000000000001.jsonl", "truncated")]
    await importer.scan_once()
    assert await user_state(sandbox, uid) is None
    assert await ledger_count(sandbox) == 0
    assert os.listdir(staging) == ["changes-000000000001.jsonl.0123.tmp"]
