"""Building export files for importer tests, and reading what the importer did."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from exchange.format import FORMAT_VERSION, SNAPSHOT_STREAMS, FileName
from exchange.sealing import SEAL_ALG, Identities, Recipients
from exchange.signing import SIGNATURE_ALG, Signer
from exchange.writer import ExportFileWriter, PublishedFile, publish_export
from tests.queries import fetch
from tests.support import TEST_IDENTITIES, TEST_RECIPIENTS, Sandbox

ARGON = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$djEtaGFzaC1oYXNoLWhhc2g"


def user_record(
    user_id: uuid.UUID,
    version: int,
    *,
    username: str | None = None,
    password_hash: str = ARGON,
    active: bool = True,
    role: str = "user",
    op: str = "upsert",
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "entity": "user",
        "entity_id": str(user_id),
        "version": version,
        "op": op,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    if op == "upsert":
        record["data"] = {
            "username": username or f"u-{user_id.hex[:8]}",
            "password_hash": password_hash,
            "role": role,
            "is_active": active,
        }
    return record


def setting_record(key: str, value: Any, version: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "entity": "setting",
        "entity_id": str(uuid.uuid5(uuid.NAMESPACE_URL, key)),
        "version": version,
        "op": extra.pop("op", "upsert"),
        "occurred_at": datetime.now(UTC).isoformat(),
        "data": {"key": key, "value": value, **extra},
    }


def publish(
    directory: Path,
    signer: Signer,
    seq: int,
    *records: dict[str, Any],
    stream: str = "changes",
    kind: str = "changes",
    recipients: Recipients | None = TEST_RECIPIENTS,
    header: dict[str, Any] | None = None,
) -> PublishedFile:
    return publish_export(
        directory,
        signer,
        recipients=recipients,
        stream=stream,
        seq=seq,
        kind=kind,
        file_id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        records=list(records),
        header=header,
    )


async def query(sandbox: Sandbox, sql: str, *args: object) -> list[asyncpg.Record]:
    return await fetch(sandbox.services.request_url, sql, *args)


async def count(sandbox: Sandbox, table: str, where: str = "true") -> int:
    rows = await query(sandbox, f"SELECT count(*) AS n FROM {table} WHERE {where}")  # noqa: S608
    return int(rows[0]["n"])


async def user_version(sandbox: Sandbox, user_id: uuid.UUID) -> int | None:
    rows = await query(sandbox, "SELECT version FROM synced_users WHERE id = $1", user_id)
    return int(rows[0]["version"]) if rows else None


async def quarantined(sandbox: Sandbox) -> dict[str, str]:
    rows = await query(sandbox, "SELECT file_name, reason FROM quarantined_files")
    return {r["file_name"]: r["reason"] for r in rows}


def publish_snapshot(
    sandbox: Sandbox,
    entity: str,
    records: list[dict[str, Any]],
    seq: int = 1,
    *,
    latest: bool = False,
    **header: Any,
) -> PublishedFile:
    """A snapshot file of ``entity`` holding ``records``, sealed and signed as the bulk worker
    does (``header``: more header fields, ``changes_seq`` 0 unless given)."""
    stream = SNAPSHOT_STREAMS[entity]
    writer = ExportFileWriter(
        sandbox.exports,
        sandbox.signer,
        recipients=sandbox.recipients,
        stream=stream,
        seq=seq,
        kind="snapshot",
        file_id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        records=len(records),
        header={"entity": entity, "changes_seq": 0, **header},
    )
    for record in records:
        writer.write_record(record)
    return writer.publish(latest_as=stream if latest else None)


def publish_settings_snapshot(
    sandbox: Sandbox, records: list[dict[str, Any]], seq: int = 1, *, latest: bool = False
) -> PublishedFile:
    """A ``snapshot_settings`` file of ``records``."""
    return publish_snapshot(sandbox, "setting", records, seq, latest=latest)


def export_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".jsonl"))


def signed(signer: Signer, body: bytes) -> bytes:
    """Any bytes, with a valid signature trailer: what a trusted but faulty producer could write."""
    digest = hashlib.sha256(body).digest()
    trailer = {
        "signature": {
            "alg": SIGNATURE_ALG,
            "key_id": signer.key_id,
            "sha256": digest.hex(),
            "value": base64.b64encode(signer.sign(digest)).decode(),
        }
    }
    return body + orjson.dumps(trailer) + b"\n"


def sealed(
    body: bytes, seq: int, stream: str = "changes", recipients: Recipients = TEST_RECIPIENTS
) -> bytes:
    """A body sealed as the writer seals it: clear envelope, ciphertext, newline (unsigned)."""
    envelope = {
        "format": "netsync-export",
        "version": FORMAT_VERSION,
        "stream": stream,
        "seq": seq,
        "sealed": {"alg": SEAL_ALG, "recipients": recipients.key_ids},
    }
    return orjson.dumps(envelope) + b"\n" + recipients.seal(body) + b"\n"


def body_lines(data: bytes, identities: Identities = TEST_IDENTITIES) -> list[bytes]:
    """The clear body lines (header, records) of a sealed export file's bytes: what only a
    holder of the private key can read."""
    envelope, rest = data.split(b"\n", 1)
    recipients = orjson.loads(envelope)["sealed"]["recipients"]
    ciphertext = rest[: rest.rstrip(b"\n").rfind(b"\n")]  # up to the trailer's line
    return identities.unseal(ciphertext, recipients).splitlines()


def record_lines(data: bytes, identities: Identities = TEST_IDENTITIES) -> list[bytes]:
    """The clear record lines of a sealed export file's bytes."""
    return body_lines(data, identities)[1:]


def genuine(signer: Signer, body: bytes, seq: int, stream: str = "changes") -> bytes:
    """Any body, sealed and signed: what a trusted but faulty producer could write."""
    return signed(signer, sealed(body, seq, stream))


def header(seq: int, records: int = 1, **overrides: Any) -> bytes:
    """A body's header line (what the ciphertext of a sealed file starts with)."""
    value = {
        "format": "netsync-export",
        "version": FORMAT_VERSION,
        "stream": "changes",
        "seq": seq,
        "file_id": str(uuid.uuid4()),
        "kind": "changes",
        "created_at": datetime.now(UTC).isoformat(),
        "records": records,
        **overrides,
    }
    return orjson.dumps(value) + b"\n"


def forged_trailer(signer: Signer) -> bytes:
    """A trailer that names a trusted key and carries a signature that is not one."""
    return (
        orjson.dumps(
            {
                "signature": {
                    "alg": SIGNATURE_ALG,
                    "key_id": signer.key_id,
                    "sha256": "00" * 32,
                    "value": base64.b64encode(b"\x01" * 64).decode(),
                }
            }
        )
        + b"\n"
    )


USERS = [uuid.uuid5(uuid.NAMESPACE_DNS, f"burst-{i}.example") for i in range(200)]


def drop_burst(sandbox: Sandbox, files: int, first_seq: int = 1) -> None:
    """Files written aside, then renamed into the directory one by one as a producer would."""
    aside = sandbox.root / f"aside-{first_seq}"
    aside.mkdir()
    paths: list[Path] = []
    for seq in range(first_seq, first_seq + files):
        record = user_record(USERS[seq % len(USERS)], seq)
        path = aside / FileName("changes", seq).name
        path.write_bytes(genuine(sandbox.signer, header(seq) + orjson.dumps(record) + b"\n", seq))
        paths.append(path)
    for path in paths:
        os.rename(path, sandbox.exports / path.name)


async def latest_versions(sandbox: Sandbox) -> dict[uuid.UUID, int]:
    rows = await query(sandbox, "SELECT id, version FROM synced_users")
    return {r["id"]: r["version"] for r in rows}


def expected_versions(files: int) -> dict[uuid.UUID, int]:
    out: dict[uuid.UUID, int] = {}
    for seq in range(1, files + 1):
        out[USERS[seq % len(USERS)]] = seq
    return out
