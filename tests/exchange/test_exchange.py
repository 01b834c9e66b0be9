"""The exchange contract on its own: what a reader accepts and everything it refuses."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exchange import writer as writer_module
from exchange.format import STAGING_DIRNAME, parse_file_name
from exchange.opening import Opener
from exchange.reader import RejectedFile, RejectReason, read_export
from exchange.signing import Keyring, Signer
from exchange.writer import ExportFileWriter, publish_export
from tests.support import TEST_IDENTITIES, TEST_RECIPIENTS

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


def record(version: int = 1, **data: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "entity": "user",
        "entity_id": str(uuid.uuid4()),
        "version": version,
        "op": "upsert",
        "occurred_at": datetime.now(UTC).isoformat(),
        "data": {
            "username": "bob",
            "password_hash": HASH,
            "role": "user",
            "is_active": True,
            **data,
        },
    }


def publish(directory: Path, signer: Signer, seq: int = 1, records: int = 2) -> Path:
    published = publish_export(
        directory,
        signer,
        recipients=TEST_RECIPIENTS,
        stream="changes",
        seq=seq,
        kind="changes",
        file_id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        records=[record() for _ in range(records)],
    )
    return published.path


def read(path: Path, keyring: Keyring, max_bytes: int = 1 << 20) -> Any:
    name = parse_file_name(path.name)
    assert name is not None
    return read_export(path.parent, name, keyring, max_bytes, Opener(TEST_IDENTITIES))


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def keyring(signer: Signer) -> Keyring:
    return Keyring([signer.private_key.public_key()])


def test_a_published_file_reads_back_with_its_records(tmp_path: Path, signer: Signer) -> None:
    path = publish(tmp_path, signer, seq=7, records=3)
    export = read(path, Keyring([signer.private_key.public_key()]))
    assert path.name == "changes-000000000007.jsonl"
    assert (export.header.stream, export.header.seq, export.header.records) == ("changes", 7, 3)
    assert len(export.records) == 3
    assert export.key_id == signer.key_id
    assert list((tmp_path / STAGING_DIRNAME).iterdir()) == []


@pytest.mark.parametrize(
    "damage",
    ["flip_a_byte", "truncate", "drop_trailer", "append_record"],
)
def test_a_damaged_file_is_refused_before_parsing(
    tmp_path: Path, signer: Signer, keyring: Keyring, damage: str
) -> None:
    path = publish(tmp_path, signer)
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    if damage == "flip_a_byte":
        i = data.index(b"\n") + 100  # a byte of the ciphertext
        data = data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "drop_trailer":
        data = b"".join(lines[:-1])
    else:
        data = b"".join([*lines[:-1], lines[1], lines[-1]])
    path.write_bytes(data)
    with pytest.raises(RejectedFile) as err:
        read(path, keyring)
    assert err.value.reason in {
        RejectReason.BAD_SIGNATURE,
        RejectReason.TRUNCATED,
        RejectReason.UNSIGNED,
    }


def test_a_file_signed_with_another_key_is_refused(tmp_path: Path, keyring: Keyring) -> None:
    path = publish(tmp_path, Signer.generate())
    with pytest.raises(RejectedFile) as err:
        read(path, keyring)
    assert err.value.reason is RejectReason.UNKNOWN_KEY


def test_a_renamed_file_is_refused(tmp_path: Path, signer: Signer, keyring: Keyring) -> None:
    path = publish(tmp_path, signer, seq=1)
    renamed = path.rename(tmp_path / "changes-000000000002.jsonl")
    with pytest.raises(RejectedFile) as err:
        read(renamed, keyring)
    assert err.value.reason is RejectReason.NAME_MISMATCH


def test_oversized_files_are_refused_without_reading(
    tmp_path: Path, signer: Signer, keyring: Keyring
) -> None:
    path = publish(tmp_path, signer, records=20)
    with pytest.raises(RejectedFile) as err:
        read(path, keyring, max_bytes=100)
    assert err.value.reason is RejectReason.TOO_LARGE


def test_symlinks_are_never_followed(tmp_path: Path, signer: Signer, keyring: Keyring) -> None:
    real = publish(tmp_path / "elsewhere", signer)
    link = tmp_path / real.name
    link.symlink_to(real)
    with pytest.raises(RejectedFile) as err:
        read(link, keyring)
    assert err.value.reason is RejectReason.SYMLINK


def _writer(directory: Path, signer: Signer, records: int) -> ExportFileWriter:
    return ExportFileWriter(
        directory,
        signer,
        recipients=TEST_RECIPIENTS,
        stream="changes",
        seq=1,
        kind="changes",
        file_id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        records=records,
    )


def test_a_failed_write_publishes_nothing(tmp_path: Path, signer: Signer) -> None:
    writer = _writer(tmp_path, signer, records=2)
    writer.write_record(record())
    with pytest.raises(ValueError, match="announced 2 records"):
        writer.publish()  # one record short
    assert sorted(os.listdir(tmp_path)) == [STAGING_DIRNAME]
    assert os.listdir(tmp_path / STAGING_DIRNAME) == []


def test_a_body_past_the_stream_threshold_is_sealed_into_the_file_by_the_child(
    tmp_path: Path, signer: Signer, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large body's ciphertext is written into the staging file by the sealing child, which
    reports the digest the writer signs: the file must verify and open like any other."""
    monkeypatch.setattr(writer_module, "STREAM_ABOVE_BYTES", 64 << 10)
    writer = _writer(tmp_path, signer, records=3000)  # ~1 MB: streamed, many chunks
    for _ in range(3000):
        writer.write_record(record())
    assert writer._stream is not None  # the child is sealing this one
    published = writer.publish()
    raw = published.path.read_bytes()
    assert published.size == len(raw) > 900_000  # fifteen 64 KiB chunks and more
    assert HASH.encode() not in raw
    export = read(published.path, keyring, max_bytes=8 << 20)
    assert len(export.records) == 3000
    assert export.records[0].data.password_hash == HASH
    assert os.listdir(tmp_path / STAGING_DIRNAME) == []


def test_a_file_announcing_many_records_is_sealed_by_the_child_from_its_first_byte(
    tmp_path: Path, signer: Signer, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large snapshot starts its sealing child before the first record (its start-up then
    overlaps the database's first rows); however little it turns out to hold, it verifies and
    opens like any other file."""
    monkeypatch.setattr(writer_module, "STREAM_FROM_START_RECORDS", 3)
    writer = _writer(tmp_path, signer, records=3)
    assert writer._stream is not None  # before any record
    for _ in range(3):
        writer.write_record(record())
    published = writer.publish()
    raw = published.path.read_bytes()
    assert HASH.encode() not in raw
    export = read(published.path, keyring)
    assert [r.data.password_hash for r in export.records] == [HASH] * 3
    assert os.listdir(tmp_path / STAGING_DIRNAME) == []


def test_a_sealing_child_that_dies_publishes_nothing(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "STREAM_ABOVE_BYTES", 64 << 10)
    writer = _writer(tmp_path, signer, records=2000)
    for _ in range(1000):
        writer.write_record(record())
    assert writer._stream is not None
    writer._stream._proc.kill()  # out of memory, or an operator's kill

    def the_rest() -> None:
        for _ in range(1000):
            writer.write_record(record())
        writer.publish()

    with pytest.raises(OSError, match="sealing process"):
        the_rest()
    writer.abort()
    assert sorted(os.listdir(tmp_path)) == [STAGING_DIRNAME]
    assert os.listdir(tmp_path / STAGING_DIRNAME) == []


@pytest.mark.parametrize(
    "name",
    ["changes-1.jsonl", "changes-000000000001.jsonl.tmp", "../changes-000000000001.jsonl",
     "Changes-000000000001.jsonl", "changes-000000000000.jsonl", ".changes-000000000001.jsonl"],
)  # fmt: skip
def test_names_that_are_not_ours_do_not_parse(name: str) -> None:
    assert parse_file_name(name) is None


@pytest.mark.parametrize(
    "value", ["NaN", "Infinity", "-Infinity", "1e400", "9223372036854775808", '{"a": [1, NaN]}']
)
def test_a_setting_value_jsonb_or_orjson_would_not_keep_as_it_is_is_refused(value: str) -> None:
    """The JSON parser reads these; ``jsonb`` refuses them or orjson writes them as null, so a
    record holding one would be applied with another value than it said."""
    from pydantic import ValidationError

    from exchange.format import ChangeRecord

    line = (
        f'{{"event_id": "{uuid.uuid4()}", "entity": "setting", "entity_id": "{uuid.uuid4()}",'
        ' "version": 1, "op": "upsert", "occurred_at": "2026-01-01T00:00:00+00:00",'
        f' "data": {{"key": "a.b", "value": {value}}}}}'
    )
    with pytest.raises(ValidationError):
        ChangeRecord.model_validate_json(line)
    ok = line.replace(value, "[9223372036854775807, 1.5, true]")
    assert ChangeRecord.model_validate_json(ok).data is not None


def test_a_sealing_child_inherits_none_of_the_workers_secrets(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever reads the child's /proc environ (the same user) finds no database URL or token."""
    monkeypatch.setenv("NETSYNC_DATABASE_URL", "postgresql://netsync:s3cret-password@db/netsync")
    monkeypatch.setattr(writer_module, "STREAM_ABOVE_BYTES", 64 << 10)
    writer = _writer(tmp_path, signer, records=1000)
    try:
        for _ in range(1000):
            writer.write_record(record())
        assert writer._stream is not None
        environ = Path(f"/proc/{writer._stream._proc.pid}/environ").read_bytes()
        assert b"s3cret-password" not in environ
        assert b"NETSYNC_" not in environ
        writer.publish()
    finally:
        writer.abort()
