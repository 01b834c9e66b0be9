"""What an attacker who can write to the exports directory would try first, one test per hole:
forged, unsigned, truncated, oversized and replayed files, and files posing as others.

Each test is the attack itself; each asserts what the attacker wanted did not happen (nothing
applied, nothing stalled, memory and time bounded) and that the next genuine file still applies.
The importer's own directories under attack are in ``test_boundary_files.py``.
"""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from exchange.format import FileName, kind_of_stream
from exchange.signing import Signer
from tests.importer.conftest import MakeImporter
from tests.importer.files import (
    body_lines,
    count,
    forged_trailer,
    header,
    publish,
    quarantined,
    setting_record,
    user_record,
    user_version,
)
from tests.support import Sandbox, database_refusing


def forged_snapshot(path: Path, signer: Signer, megabytes: int) -> None:
    """A snapshot shaped like a genuine one (header, a row per line), signed by nobody."""
    head = {
        "format": "netsync-export",
        "version": 1,
        "stream": "snapshot_settings",
        "seq": 1,
        "file_id": str(uuid.uuid4()),
        "kind": "snapshot",
        "created_at": datetime.now(UTC).isoformat(),
        "records": 0,
        "entity": "setting",
        "changes_seq": 0,
    }
    row = {
        "event_id": str(uuid.uuid4()),
        "entity": "setting",
        "entity_id": str(uuid.uuid4()),
        "version": 1,
        "op": "upsert",
        "occurred_at": datetime.now(UTC).isoformat(),
        "data": {"key": "forged.key", "value": "x" * 150},
    }
    line = orjson.dumps(row) + b"\n"
    per_block = (1 << 20) // len(line)
    block = line * per_block
    head["records"] = per_block * megabytes
    with path.open("wb") as fh:
        fh.write(orjson.dumps(head) + b"\n")
        for _ in range(megabytes):
            fh.write(block)
        fh.write(forged_trailer(signer))


async def test_a_forged_snapshot_is_refused_before_the_database_is_touched(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    # Before: the snapshot was COPYed into a temporary table and only then found forged. With
    # the Request database refusing connections, that meant "database unavailable, retry":
    # the forged file was never even refused. Verified first, it is refused without it.
    importer = make_importer()
    name = FileName("snapshot_settings", 1).name
    forged_snapshot(sandbox.exports / name, sandbox.signer, megabytes=24)
    tracemalloc.start()
    try:
        async with database_refusing(sandbox.services.request_url):
            result = await importer.scan_once()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.quarantined == 1
    sidecar = orjson.loads((importer.quarantine_dir / f"{name}.reason.json").read_bytes())
    assert sidecar["reason"] == "bad_signature"
    assert peak < 8 * 1024 * 1024, f"{peak / 1e6:.1f} MB held while refusing a 24 MB file"
    assert not (sandbox.exports / name).exists()
    assert list(importer.files.spool_dir.iterdir()) == []  # no copy of it left anywhere
    # the row follows once the database is back, and nothing of the file was applied
    await importer.scan_once()
    assert (await quarantined(sandbox))[name] == "bad_signature"
    assert await count(sandbox, "synced_settings") == 0


async def test_a_forged_results_file_is_refused_by_its_size_before_a_byte_is_read(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    # Before: a 300 MB results file was parsed into a list of every row, then found forged.
    importer = make_importer()
    name = FileName("results", 7).name
    with (sandbox.exports / name).open("wb") as fh:
        fh.truncate(300 * 1024 * 1024)  # sparse: costs no disk
    started = time.monotonic()
    result = await importer.scan_once()
    assert time.monotonic() - started < 2
    assert result.quarantined == 1
    assert (await quarantined(sandbox))[name] == "too_large"


async def test_a_device_file_under_an_export_name_is_refused_without_being_opened(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root (CI runs as root)")
    importer = make_importer()
    name = FileName("snapshot_users", 3).name
    os.mknod(sandbox.exports / name, 0o600 | 0o020000, os.makedev(1, 5))  # /dev/zero's numbers
    uid = uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 1, user_record(uid, 1))
    result = await asyncio.wait_for(importer.scan_once(), 10)
    assert (result.applied, result.quarantined) == (1, 1)
    assert (await quarantined(sandbox))[name] == "not_regular_file"


async def test_a_forged_file_reusing_a_genuine_file_id_is_refused_not_archived_as_a_duplicate(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    uid = uuid.uuid4()
    genuine = publish(sandbox.exports, sandbox.signer, 1, user_record(uid, 1))
    file_id = orjson.loads(body_lines(genuine.path.read_bytes())[0])["file_id"]
    assert (await importer.scan_once()).applied == 1

    # the same file id under another number, and under the same number, signed by nobody
    for seq in (2, 1):
        body = header(seq, file_id=file_id) + orjson.dumps(user_record(uid, 9)) + b"\n"
        (sandbox.exports / FileName("changes", seq).name).write_bytes(
            body + forged_trailer(sandbox.signer)
        )
    result = await importer.scan_once()
    assert (result.duplicates, result.quarantined) == (0, 2)
    found = await quarantined(sandbox)
    assert found == {
        FileName("changes", 1).name: "bad_signature",
        FileName("changes", 2).name: "bad_signature",
    }
    assert await user_version(sandbox, uid) == 1
    assert sorted(os.listdir(importer.archive_dir)) == [FileName("changes", 1).name]


async def test_two_genuine_files_claiming_one_place_are_a_conflict_never_a_silent_duplicate(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    uid = uuid.uuid4()
    first = publish(sandbox.exports, sandbox.signer, 1, user_record(uid, 1))
    again = first.path.read_bytes()
    assert (await importer.scan_once()).applied == 1

    # the very same file again (a resend): a duplicate, archived quietly
    first.path.write_bytes(again)
    assert (await importer.scan_once()).duplicates == 1
    # another genuine file under the same number (a restored Response database): a conflict
    publish(sandbox.exports, sandbox.signer, 1, user_record(uid, 5))
    result = await importer.scan_once()
    assert (result.applied, result.duplicates, result.quarantined) == (0, 0, 1)
    assert (await quarantined(sandbox))[FileName("changes", 1).name] == "ledger_conflict"
    assert await user_version(sandbox, uid) == 1


async def test_a_genuine_file_cut_at_any_record_boundary_is_never_applied(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    elsewhere = sandbox.root / "elsewhere"
    elsewhere.mkdir()
    users = [uuid.uuid4() for _ in range(12)]
    good = publish(elsewhere, sandbox.signer, 1, *(user_record(u, 1) for u in users))
    data = good.path.read_bytes()
    # after every newline (the envelope's, the ciphertext's own, the separator), and inside
    # each 64 KiB chunk of the ciphertext
    cuts = [i + 1 for i, byte in enumerate(data[:-1]) if byte == ord("\n")]
    cuts += list(range(data.index(b"\n") + 200, len(data) - 200, 1500))
    assert len(cuts) > 3
    for seq, cut in enumerate(cuts, start=100):
        body = data[:cut].replace(b'"seq":1,', f'"seq":{seq},'.encode(), 1)
        (sandbox.exports / FileName("changes", seq).name).write_bytes(body)
    result = await importer.scan_once()
    assert (result.applied, result.quarantined) == (0, len(cuts))
    assert set((await quarantined(sandbox)).values()) <= {"unsigned", "truncated"}
    assert await count(sandbox, "synced_users") == 0


@pytest.mark.parametrize("size", [1024, 100 * 1024 * 1024, 1024 * 1024 * 1024])
@pytest.mark.parametrize("stream", ["changes", "results", "snapshot_settings"])
async def test_forged_and_unsigned_files_of_every_stream_and_size_are_refused_fast(
    sandbox: Sandbox, make_importer: MakeImporter, stream: str, size: int
) -> None:
    importer = make_importer()
    forged = FileName(stream, 1).name
    unsigned = FileName(stream, 2).name
    for name, tail in ((forged, forged_trailer(sandbox.signer)), (unsigned, b"")):
        with (sandbox.exports / name).open("wb") as fh:
            fh.truncate(size - len(tail) - 1)  # sparse zeros: one line, costing no disk
            fh.seek(0, os.SEEK_END)
            fh.write(b"\n" + tail)
    uid = uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 3, user_record(uid, 1))
    started = time.monotonic()
    result = await importer.scan_once()
    seconds = time.monotonic() - started
    found = await quarantined(sandbox)
    limit = importer.settings.max_bytes_for(kind_of_stream(stream) or "changes")
    if size > limit:
        assert (found[forged], found[unsigned]) == ("too_large", "too_large")
    else:
        assert found[forged] == "bad_signature"
        assert found[unsigned] in {"unsigned", "truncated"}
    assert result.applied == 1
    assert await user_version(sandbox, uid) == 1
    assert seconds < 5 * max(1, size / (1 << 30)) + 2
    assert list(importer.files.spool_dir.iterdir()) == []


async def test_a_genuine_file_published_over_a_refused_one_is_judged_on_its_own(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    # The attacker plants a forged changes-1; the relay then publishes the genuine one over it
    # between the refusal and the quarantine. The quarantine must not take the genuine file.
    importer = make_importer()
    name = FileName("changes", 1)
    (sandbox.exports / name.name).write_bytes(header(1) + b"{}\n" + forged_trailer(sandbox.signer))
    refused = importer.reader.verified(name)
    assert not isinstance(refused, type(None))
    assert getattr(refused, "reason", None) == "bad_signature"
    uid = uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 1, user_record(uid, 1))  # os.replace over it
    assert not await importer.quarantined.put(name.name, refused)  # type: ignore[arg-type]
    assert (sandbox.exports / name.name).exists()
    result = await importer.scan_once()
    assert (result.applied, result.quarantined) == (1, 0)
    assert await user_version(sandbox, uid) == 1


async def test_a_genuine_changes_file_between_8_and_16_mib_applies(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    records = [setting_record(f"big.key_{i}", "x" * 60_000) for i in range(160)]
    published = publish(sandbox.exports, sandbox.signer, 1, *records)
    assert 8 << 20 < published.path.stat().st_size < 16 << 20
    result = await importer.scan_once()
    assert (result.applied, result.quarantined) == (1, 0)
    assert await count(sandbox, "synced_settings") == 160


def test_a_file_that_grows_while_it_is_read_is_refused_at_once(tmp_path: Path) -> None:
    from exchange.intake import RejectedFile, _hash_and_copy

    path = tmp_path / "growing"
    path.write_bytes(b"x" * (3 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        started = time.monotonic()
        with pytest.raises(RejectedFile, match="grew"):
            _hash_and_copy(fd, None, 1 << 20)  # fstat said 1 MiB: it has grown since
        assert time.monotonic() - started < 1
    finally:
        os.close(fd)
