"""The exports directory is a trust boundary: whatever lands in it, nothing unsound is applied,
every refused file is quarantined with its reason (database row and sidecar), names that are not
ours are recorded once and left alone, and the daemon carries on applying genuine files."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from exchange.format import FileName
from exchange.reader import RejectReason
from exchange.signing import Signer
from importer.daemon.loop import Importer
from tests.importer.conftest import MakeImporter
from tests.importer.files import (
    count,
    export_names,
    genuine,
    header,
    publish,
    quarantined,
    query,
    setting_record,
    signed,
    user_record,
    user_version,
)
from tests.support import Sandbox, database_refusing, eventually


def name(seq: int) -> str:
    return FileName("changes", seq).name


def hostile_files(sandbox: Sandbox, victim: uuid.UUID) -> dict[str, str]:
    """Write one file per hostile case into the exports directory; return name -> reason."""
    exports, signer = sandbox.exports, sandbox.signer
    elsewhere = sandbox.root / "elsewhere"
    elsewhere.mkdir()
    good = publish(elsewhere, signer, 1, user_record(victim, 9)).path.read_bytes()
    record = orjson.dumps(user_record(victim, 9)) + b"\n"
    expected: dict[str, str] = {}

    def put(seq: int, data: bytes, reason: RejectReason) -> None:
        (exports / name(seq)).write_bytes(data)
        expected[name(seq)] = reason.value

    half = len(good) // 2
    while good[half - 1] == ord("\n"):  # the ciphertext is random: cut it mid-line
        half -= 1
    put(101, good[:half], RejectReason.TRUNCATED)
    altered = bytearray(good)
    altered[altered.index(b"\n") + 60] ^= 1  # one bit of the ciphertext
    put(102, bytes(altered), RejectReason.BAD_SIGNATURE)
    put(103, b"".join(good.splitlines(keepends=True)[:-1]), RejectReason.UNSIGNED)
    put(
        104,
        genuine(signer, header(104) + b'{"entity": "user", oops\n', 104),
        RejectReason.INVALID_JSON,
    )
    put(
        105, genuine(signer, header(105, version=3) + record, 105), RejectReason.UNSUPPORTED_VERSION
    )
    put(
        106, genuine(signer, header(106, format="other") + record, 106), RejectReason.UNKNOWN_FORMAT
    )
    put(
        107,
        genuine(signer, header(107, records=1, kind="delta") + record, 107),
        RejectReason.INVALID_SCHEMA,
    )
    wrong = orjson.dumps({**user_record(victim, 9), "entity": "setting"}) + b"\n"
    put(108, genuine(signer, header(108) + wrong, 108), RejectReason.INVALID_SCHEMA)
    put(109, genuine(signer, header(109, records=3) + record, 109), RejectReason.INVALID_SCHEMA)
    put(110, genuine(signer, header(999) + record, 110), RejectReason.NAME_MISMATCH)
    put(111, genuine(Signer.generate(), header(111) + record, 111), RejectReason.UNKNOWN_KEY)
    put(
        112,
        genuine(signer, header(112, stream="../../etc") + record, 112),
        RejectReason.INVALID_SCHEMA,
    )
    put(113, good.replace(b"changes-", b"changes-") + b"x" * 5000, RejectReason.TOO_LARGE)
    put(114, b"", RejectReason.TRUNCATED)
    # a symlink to a genuine file elsewhere, and one pointing out of the directory
    (exports / name(115)).symlink_to(elsewhere / name(1))
    expected[name(115)] = RejectReason.SYMLINK.value
    (exports / name(116)).symlink_to("../../../../etc/passwd")
    expected[name(116)] = RejectReason.SYMLINK.value
    # not regular files: a FIFO (reading a FIFO would block forever); a directory under an
    # export name is a foreign name (``foreign_names``)
    os.mkfifo(exports / name(118))
    expected[name(118)] = RejectReason.NOT_REGULAR.value
    return expected


def foreign_names(sandbox: Sandbox) -> list[str]:
    names = ["changes-1.jsonl", "notes.txt", "changes-000000000001.jsonl.part", "x\udcff.bin"]
    for foreign in names:
        (sandbox.exports / foreign).write_bytes(b"not ours")
    (sandbox.exports / "some-directory").mkdir()
    # a directory under an export name: never read, never removed, recorded once
    (sandbox.exports / name(117)).mkdir()
    (sandbox.exports / name(117) / "inside").write_bytes(b"x")
    # a transfer tool's temporary file: left alone and not even recorded
    (sandbox.exports / ".changes-000000000001.jsonl.Xy12Ab").write_bytes(b"partial")
    return [*names, "some-directory", name(117)]


async def test_every_hostile_file_is_quarantined_with_its_reason_and_genuine_files_still_apply(
    sandbox: Sandbox, daemon: Importer
) -> None:
    victim = uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 1, user_record(victim, 1))
    await eventually(lambda: user_version(sandbox, victim))
    daemon.settings.max_file_bytes = 4000  # the 5 KB file is over it, every other one under
    expected = hostile_files(sandbox, victim)
    foreign = foreign_names(sandbox)

    async def all_handled() -> bool:
        return len(await quarantined(sandbox)) == len(expected) + len(foreign)

    await eventually(all_handled, timeout=20)
    found = await quarantined(sandbox)
    assert {k: v for k, v in found.items() if k in expected} == expected
    printable = [f.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for f in foreign]
    assert {k: found[k] for k in printable} == dict.fromkeys(printable, "not_an_export_name")
    assert await user_version(sandbox, victim) == 1
    assert await count(sandbox, "import_ledger") == 1
    for hostile in expected:
        kept = daemon.quarantine_dir / hostile
        # a plain file holding at most the first bytes of what was refused: never a link
        assert kept.exists(), hostile
        assert not kept.is_symlink(), hostile
        sidecar = orjson.loads((daemon.quarantine_dir / f"{hostile}.reason.json").read_bytes())
        assert sidecar["reason"] == expected[hostile]
    # the quarantine is the importer's own, outside the exports directory
    assert not daemon.quarantine_dir.resolve().is_relative_to(sandbox.exports.resolve())
    # names that are not ours stay where they are, recorded once however often we scan
    assert sorted(os.listdir(sandbox.exports)) == sorted(
        [*foreign, ".staging", ".changes-000000000001.jsonl.Xy12Ab"]
    )
    await daemon.scan_once()
    assert await count(sandbox, "quarantined_files", "reason = 'not_an_export_name'") == 6

    # and the daemon is still applying genuine files
    publish(sandbox.exports, sandbox.signer, 2, user_record(victim, 2))

    async def applied() -> bool:
        return await user_version(sandbox, victim) == 2

    await eventually(applied)


#: Records the contract admits and the database refuses.
REFUSED_BY_THE_DATABASE = {
    "a version beyond the column's range": lambda uid: user_record(uid, 2**40),
    "a NUL character in a name": lambda uid: user_record(uid, 1, username="ali\x00ce"),
    # year 10000 in UTC: stored, it would make the row unreadable to every driver
    "a time beyond year 9999": lambda uid: {
        **user_record(uid, 1),
        "occurred_at": "9999-12-31T23:59:59-01:00",
    },
}


@pytest.mark.parametrize("refused", REFUSED_BY_THE_DATABASE.values(), ids=REFUSED_BY_THE_DATABASE)
async def test_a_signed_file_the_database_refuses_is_quarantined_without_holding_back_its_batch(
    sandbox: Sandbox, make_importer: MakeImporter, refused: Callable[[uuid.UUID], dict[str, Any]]
) -> None:
    importer = make_importer()
    users = [uuid.uuid4() for _ in range(5)]
    for seq, uid in enumerate(users, start=1):
        record = refused(uid) if seq == 3 else user_record(uid, 1)
        publish(sandbox.exports, sandbox.signer, seq, record)
    result = await importer.scan_once()
    assert (result.applied, result.quarantined) == (4, 1)
    assert [await user_version(sandbox, u) for u in users] == [1, 1, None, 1, 1]
    assert await quarantined(sandbox) == {name(3): "apply_failed"}
    assert export_names(sandbox.exports) == []


async def test_a_signed_setting_beyond_what_the_response_side_sends_is_refused_not_rewritten(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    # 2^63 + 5: orjson writes it, jsonb would store it; the Response side never sends one
    publish(sandbox.exports, sandbox.signer, 1, setting_record("huge.number", 2**63 + 5))
    publish(sandbox.exports, sandbox.signer, 2, setting_record("fine.number", 2**63 - 1))
    result = await importer.scan_once()
    assert (result.applied, result.quarantined) == (1, 1)
    assert await quarantined(sandbox) == {name(1): "invalid_schema"}
    rows = await query(sandbox, "SELECT key, value::text AS value FROM synced_settings")
    assert [(r["key"], r["value"]) for r in rows] == [("fine.number", str(2**63 - 1))]


async def test_a_file_refused_while_the_database_is_down_is_recorded_once_it_is_back(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    await importer.scan_once()
    publish(sandbox.exports, Signer.generate(), 1, user_record(uuid.uuid4(), 1))
    async with database_refusing(sandbox.services.request_url):
        result = await importer.scan_once()
    assert result.quarantined == 1  # refused for its content: no database needed for that
    assert (importer.quarantine_dir / f"{name(1)}.reason.json").exists()
    assert await quarantined(sandbox) == {}

    await importer.scan_once()
    assert await quarantined(sandbox) == {name(1): "unknown_key"}
    await make_importer().scan_once()  # a restarted importer reconciles too: nothing twice
    assert await count(sandbox, "quarantined_files") == 1


MUTATIONS = (
    "flip",
    "truncate",
    "insert",
    "delete",
    "swap_lines",
    "duplicate_line",
    "impostor",
    "garbage_trailer",
    "drop_header",
)


def mutate(data: bytes, how: str, rng: random.Random, impostor: Signer) -> bytes:
    lines = data.splitlines(keepends=True)
    if how == "flip":
        i = rng.randrange(len(data))
        return data[:i] + bytes([data[i] ^ rng.randrange(1, 256)]) + data[i + 1 :]
    if how == "truncate":
        return data[: rng.randrange(len(data))]
    if how == "insert":
        i = rng.randrange(len(data))
        return data[:i] + rng.randbytes(rng.randrange(1, 8)) + data[i:]
    if how == "delete":
        i = rng.randrange(len(data))
        return data[:i] + data[i + rng.randrange(1, 8) :]
    if how == "swap_lines":
        body = lines[:-1]
        i = rng.randrange(1, len(body))
        body[0], body[i] = body[i], body[0]
        return b"".join([*body, lines[-1]])
    if how == "duplicate_line":
        return b"".join([*lines[:-1], lines[rng.randrange(1, len(lines) - 1)], lines[-1]])
    if how == "impostor":
        return signed(impostor, b"".join(lines[:-1]))
    if how == "garbage_trailer":
        return b"".join([*lines[:-1], rng.randbytes(40).replace(b"\n", b"") + b"\n"])
    return b"".join(lines[1:])  # drop_header


async def test_a_thousand_mutated_files_apply_nothing_and_are_all_quarantined_with_a_reason(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    rng = random.Random(20261121)
    impostor = Signer.generate()
    staged = sandbox.root / "genuine"
    staged.mkdir()
    originals = [
        publish(
            staged,
            sandbox.signer,
            seq,
            *(user_record(uuid.uuid4(), 1) for _ in range(rng.randrange(1, 4))),
        ).path.read_bytes()
        for seq in range(1, 6)
    ]
    total = 1200
    # written under sequence numbers no original carries: a mutation that happens to leave
    # the signature intact (e.g. whitespace in the trailer) is still refused by its name
    for i in range(total):
        how = MUTATIONS[i % len(MUTATIONS)]
        data = mutate(rng.choice(originals), how, rng, impostor)
        (sandbox.exports / name(1000 + i)).write_bytes(data)

    importer = make_importer()
    result = await importer.scan_once()

    assert result.applied == 0
    assert result.quarantined == total
    assert await count(sandbox, "import_ledger") == 0
    assert await count(sandbox, "synced_users") == 0
    rows = await query(sandbox, "SELECT reason, count(*) AS n FROM quarantined_files GROUP BY 1")
    reasons = {r["reason"]: r["n"] for r in rows}
    assert sum(reasons.values()) == total
    assert set(reasons) <= {r.value for r in RejectReason}
    assert export_names(sandbox.exports) == []
    sidecars = [n for n in os.listdir(importer.quarantine_dir) if n.endswith(".reason.json")]
    assert len(sidecars) == total
