"""Sealed export files: nobody without the Request Network's private key reads a hash or a
setting, and every way a sealed body can be wrong is its own, named refusal.

The attacker's view first: whoever reads the exports directory (or the medium it travels on),
the archive or the quarantine sees ciphertext only. Then a faulty or hostile producer that holds
the signing key: a body sealed to the wrong key, a re-encrypted body under an old signature, a
ciphertext cut short, two chunks swapped. Then the operator's view: the ``age`` CLI opens a body
for forensics, and a production importer refuses plaintext. The keys themselves (rotation,
permissions, reloads) are ``test_sealing_keys.py``'s.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import orjson
import pytest

from exchange.format import FileName
from exchange.sealing import (
    Recipients,
    SealError,
    SealReason,
    generate_identity,
)
from tests.importer.conftest import MakeImporter
from tests.importer.files import (
    count,
    header,
    publish,
    publish_settings_snapshot,
    quarantined,
    record_lines,
    sealed,
    setting_record,
    signed,
    user_record,
    user_version,
)
from tests.support import (
    TEST_IDENTITIES,
    TEST_RECIPIENTS,
    Sandbox,
)

HASH = "$argon2id$v=19$m=65536,t=3,p=1$c2VjcmV0c2FsdA$Q0xFQVJURVhUSEFTSA"
SECRET = "smtp-password-9f1c2e7b"
CHUNK = 64 * 1024 + 16  # an age payload chunk: 64 KiB and its Poly1305 tag


def _secret_records(uid: uuid.UUID) -> list[dict[str, object]]:
    return [
        user_record(uid, 1, username="grace", password_hash=HASH),
        setting_record("mail.smtp_password", SECRET),
    ]


def _assert_opaque(data: bytes) -> None:
    for clear in (HASH.encode(), SECRET.encode(), b"grace", b"mail.smtp_password"):
        assert clear not in data


async def test_no_hash_or_setting_is_readable_without_the_private_key_anywhere_it_is_kept(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    uid = uuid.uuid4()
    applied = publish(sandbox.exports, sandbox.signer, 1, *_secret_records(uid))
    # sealed to a key this importer lacks: a genuine file kept whole in the quarantine
    refused = publish(
        sandbox.exports,
        sandbox.signer,
        2,
        *_secret_records(uid),
        recipients=Recipients.of([generate_identity()[1]]),
    )
    on_the_way = {p: p.read_bytes() for p in (applied.path, refused.path)}
    for path, data in on_the_way.items():
        _assert_opaque(data)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640  # a transfer agent's group, nobody else
    assert stat.S_IMODE((sandbox.exports / ".staging").stat().st_mode) == 0o750
    # ... and what the private key opens is every record, hash and value included
    opened = [orjson.loads(line) for line in record_lines(on_the_way[applied.path])]
    assert opened[0]["data"]["password_hash"] == HASH
    assert opened[1]["data"]["value"] == SECRET

    importer = make_importer()
    result = await importer.scan_once()
    assert (result.applied, result.quarantined) == (1, 1)
    assert await user_version(sandbox, uid) == 1
    kept = [p for d in (importer.archive_dir, importer.quarantine_dir) for p in d.iterdir()]
    assert {p.name for p in kept} >= {applied.name, refused.name, f"{refused.name}.reason.json"}
    for path in kept:
        _assert_opaque(path.read_bytes())
    assert (importer.archive_dir / applied.name).read_bytes() == on_the_way[applied.path]


def test_the_latest_copy_of_a_snapshot_is_sealed_too(sandbox: Sandbox) -> None:
    publish_settings_snapshot(sandbox, [setting_record("mail.smtp_password", SECRET)], latest=True)
    latest = sandbox.exports / "latest" / "snapshot_settings.jsonl"
    _assert_opaque(latest.read_bytes())
    assert stat.S_IMODE(latest.stat().st_mode) == 0o640
    assert stat.S_IMODE(latest.parent.stat().st_mode) == 0o750


def test_a_large_body_streams_through_the_sealing_process_and_opens_whole(
    sandbox: Sandbox,
) -> None:
    rows = 400
    published = publish_settings_snapshot(  # ~24 MB: past the in-memory bound: the child seals it
        sandbox,
        [setting_record(f"big.key_{i}", f"{SECRET}-{i}-" + "x" * 60_000) for i in range(rows)],
    )
    data = published.path.read_bytes()
    _assert_opaque(data)
    lines = record_lines(data)
    assert len(lines) == rows
    assert orjson.loads(lines[-1])["data"]["value"].startswith(f"{SECRET}-{rows - 1}-")


def test_the_age_cli_opens_a_body_for_forensics(sandbox: Sandbox) -> None:
    if shutil.which("age") is None:
        pytest.skip("the age CLI is not installed: apt-get install -y age")
    published = publish(sandbox.exports, sandbox.signer, 1, *_secret_records(uuid.uuid4()))
    identity = next(sandbox.decryption_dir.glob("*.age.key"))
    # the command docs/exchange-format.md gives: drop the envelope line and the trailer line,
    # and the newline that separates the ciphertext from the trailer
    opened = subprocess.run(  # noqa: S602 - the pipeline an operator types, on our own file
        f"head -n -1 '{published.path}' | tail -n +2 | head -c -1 | age -d -i '{identity}'",
        shell=True,
        check=True,
        capture_output=True,
    )
    lines = opened.stdout.splitlines()
    assert orjson.loads(lines[0])["stream"] == "changes"
    assert HASH.encode() in lines[1]
    assert SECRET.encode() in lines[2]


def _age_parts(ciphertext: bytes) -> tuple[bytes, list[bytes]]:
    """The age header (with the payload nonce) and the payload's chunks."""
    mac = ciphertext.index(b"\n--- ")
    start = ciphertext.index(b"\n", mac + 1) + 1 + 16
    payload = ciphertext[start:]
    return ciphertext[:start], [payload[i : i + CHUNK] for i in range(0, len(payload), CHUNK)]


def _envelope_and_ciphertext(data: bytes) -> tuple[bytes, bytes]:
    envelope, rest = data.split(b"\n", 1)
    return envelope + b"\n", rest[: rest.rstrip(b"\n").rfind(b"\n")]


async def test_each_way_a_sealed_body_can_be_wrong_is_quarantined_with_its_own_reason(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    uid = uuid.uuid4()
    big = [setting_record(f"bulk.key_{i}", "v" * 50_000) for i in range(4)]  # 4 chunks
    body = header(0, records=len(big)) + b"".join(orjson.dumps(r) + b"\n" for r in big)
    signer, elsewhere = sandbox.signer, sandbox.root / "elsewhere"
    elsewhere.mkdir()

    def body_for(seq: int) -> bytes:
        return body.replace(b'"seq":0', f'"seq":{seq}'.encode(), 1)

    def put(seq: int, data: bytes) -> str:
        name = FileName("changes", seq).name
        (sandbox.exports / name).write_bytes(data)
        return name

    # signed properly, but sealed to a key the Request Network never had
    stranger = Recipients.of([generate_identity()[1]])
    wrong_key = put(1, signed(signer, sealed(body_for(1), 1, recipients=stranger)))
    # a genuine file whose ciphertext was replaced by a fresh sealing of other records (the
    # recipient is public): the old signature does not cover the new ciphertext
    genuine = signed(signer, sealed(body_for(2), 2))
    other = header(2) + orjson.dumps(user_record(uid, 99, password_hash=HASH)) + b"\n"
    envelope, _ = _envelope_and_ciphertext(genuine)
    trailer = genuine[genuine.rstrip(b"\n").rfind(b"\n") + 1 :]
    re_encrypted = put(2, envelope + TEST_RECIPIENTS.seal(other) + b"\n" + trailer)
    # a producer that signed a ciphertext cut after its third chunk
    envelope, ciphertext = _envelope_and_ciphertext(signed(signer, sealed(body_for(3), 3)))
    age_header, chunks = _age_parts(ciphertext)
    assert len(chunks) == 4
    truncated = put(3, signed(signer, envelope + age_header + b"".join(chunks[:3]) + b"\n"))
    # ... and one that signed a ciphertext with two chunks swapped
    envelope, ciphertext = _envelope_and_ciphertext(signed(signer, sealed(body_for(4), 4)))
    age_header, chunks = _age_parts(ciphertext)
    chunks[0], chunks[1] = chunks[1], chunks[0]
    swapped = put(4, signed(signer, envelope + age_header + b"".join(chunks) + b"\n"))
    # the control: the same body, sealed and signed as it should be, applies
    control = put(5, signed(signer, sealed(body_for(5), 5)))

    importer = make_importer()
    result = await importer.scan_once()
    assert (result.applied, result.quarantined) == (1, 4)
    found = await quarantined(sandbox)
    assert found == {
        wrong_key: "unknown_recipient",
        re_encrypted: "bad_signature",
        truncated: "sealed_truncated",
        swapped: "sealed_corrupt",
    }
    assert control not in found
    assert await count(sandbox, "synced_settings") == len(big)
    assert await user_version(sandbox, uid) is None
    # the daemon names the key it would need
    sidecar = orjson.loads((importer.quarantine_dir / f"{wrong_key}.reason.json").read_bytes())
    assert stranger.key_ids[0] in sidecar["detail"]
    assert TEST_RECIPIENTS.key_ids[0] in sidecar["detail"]  # and the one it holds


async def test_a_production_importer_refuses_plaintext_unless_told_to_accept_it(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    uid = uuid.uuid4()
    old = publish(sandbox.exports, sandbox.signer, 1, user_record(uid, 1), recipients=None)
    assert HASH.encode() not in old.path.read_bytes()  # (the default hash of user_record)
    assert b'"version":1' in old.path.read_bytes()  # the previous format, in clear

    strict = make_importer()  # env "test": not development, so plaintext is not accepted
    assert (await strict.scan_once()).quarantined == 1
    assert (await quarantined(sandbox)) == {old.name: "plaintext_refused"}
    assert await user_version(sandbox, uid) is None

    # the upgrade: files of the previous version still in flight, accepted on purpose
    publish(sandbox.exports, sandbox.signer, 2, user_record(uid, 2), recipients=None)
    publish(sandbox.exports, sandbox.signer, 3, user_record(uid, 3))
    upgrading = make_importer(accept_plaintext=True)
    assert (await upgrading.scan_once()).applied == 2
    assert await user_version(sandbox, uid) == 3


def test_an_age_header_of_many_stanzas_is_refused_before_it_is_parsed() -> None:
    """Only a holder of the signing key gets a file this far, but a buggy producer must not make
    the importer spend minutes trying a million recipient stanzas."""
    stanza = b"-> X25519 " + b"A" * 43 + b"\n" + b"A" * 43 + b"\n"
    for header_bytes in (
        b"age-encryption.org/v1\n" + stanza * 17 + b"--- " + b"A" * 43 + b"\n",
        b"age-encryption.org/v1\n" + stanza * 100_000,  # no end of header in reach
    ):
        with pytest.raises(SealError) as refused:
            TEST_IDENTITIES.unseal(header_bytes + b"\0" * 64, TEST_RECIPIENTS.key_ids)
        # refused by netsync's own bound: rage, given these, would try every stanza in turn
        assert refused.value.reason is SealReason.CORRUPT
        assert "stanzas" in refused.value.detail or "no age header" in refused.value.detail


async def test_a_large_file_is_archived_whole_and_opens_with_the_age_pipeline(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    rows = 200  # ~12 MB: spooled by the importer, not held in memory
    published = publish_settings_snapshot(
        sandbox, [setting_record(f"big.key_{i}", "x" * 60_000) for i in range(rows)]
    )
    sent = published.path.read_bytes()
    importer = make_importer()
    assert (await importer.scan_once()).applied == 1
    # the archive keeps the file as it arrived, trailer included: it verifies and opens again
    assert (importer.archive_dir / published.name).read_bytes() == sent
    assert len(record_lines(sent)) == rows


@pytest.mark.parametrize("damage", ["truncate", "swap"])
async def test_a_large_body_cut_or_reordered_is_refused_and_nothing_of_it_is_applied(
    sandbox: Sandbox, make_importer: MakeImporter, damage: str
) -> None:
    """A large body is decrypted while it is copied into the database: its end (the last
    chunk's flag) is checked before the merge, so a cut body applies no row."""
    rows = 200  # ~12 MB: spooled, and unsealed by the child process while it is read
    body = header(0, records=rows, kind="snapshot", stream="snapshot_settings")
    body = body.replace(b'"seq":0', b'"seq":1', 1)
    body = body.replace(b'"records"', b'"entity":"setting","changes_seq":0,"records"', 1)
    lines = [
        orjson.dumps(setting_record(f"big.key_{i}", "x" * 60_000)) + b"\n" for i in range(rows)
    ]
    envelope, ciphertext = _envelope_and_ciphertext(
        signed(sandbox.signer, sealed(body + b"".join(lines), 1, "snapshot_settings"))
    )
    age_header, chunks = _age_parts(ciphertext)
    if damage == "truncate":
        chunks = chunks[:-3]
    else:
        chunks[-3], chunks[-2] = chunks[-2], chunks[-3]
    name = FileName("snapshot_settings", 1).name
    damaged = envelope + age_header + b"".join(chunks) + b"\n"
    (sandbox.exports / name).write_bytes(signed(sandbox.signer, damaged))
    importer = make_importer()
    assert (await importer.scan_once()).quarantined == 1
    reason = "sealed_truncated" if damage == "truncate" else "sealed_corrupt"
    assert await quarantined(sandbox) == {name: reason}
    assert await count(sandbox, "synced_settings") == 0
    assert await count(sandbox, "import_ledger") == 0


def test_an_unsealing_child_that_dies_is_no_verdict_on_the_file(tmp_path: Path) -> None:
    """Killed (a stop signal, the OOM killer): a local fault the importer retries, never a
    quarantine of a genuine file."""
    from exchange.seal_streams import ChildLost

    ciphertext = TEST_RECIPIENTS.seal(b"x" * (1 << 20))
    path = tmp_path / "copy"
    path.write_bytes(ciphertext)
    with path.open("rb") as source:
        stream = TEST_IDENTITIES.unseal_streaming(source, len(ciphertext), TEST_RECIPIENTS.key_ids)
        stream._proc.kill()

        def drain() -> None:
            while stream.read(1 << 16):
                pass

        with pytest.raises(ChildLost):
            drain()
        stream.close()


async def test_an_unsealing_worker_that_dies_is_no_verdict_and_its_files_are_decrypted_here(
    sandbox: Sandbox,
    make_importer: MakeImporter,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch's small bodies are decrypted in one request to a long-lived child: if it dies
    (the OOM killer, a stray signal), no file of the batch is judged by it: the importer
    decrypts them itself, and the next batch starts a new child."""
    uid = uuid.uuid4()
    for seq in (1, 2, 3):
        publish(sandbox.exports, sandbox.signer, seq, user_record(uid, seq))
    monkeypatch.setattr(
        "exchange.unsealing_worker._WORKER_CHILD",
        "import sys; sys.stdin.buffer.read(4); sys.exit(9)",
    )
    importer = make_importer()
    result = await importer.scan_once()
    assert (result.applied, result.quarantined) == (3, 0)
    assert await user_version(sandbox, uid) == 3
    assert "the unsealing process failed, decrypting here" in caplog.text

    monkeypatch.undo()
    for seq in (4, 5, 6):
        publish(sandbox.exports, sandbox.signer, seq, user_record(uid, seq))
    assert (await importer.scan_once()).applied == 3
    assert importer.reader.worker._proc is not None  # a new child took the next batch
    assert await user_version(sandbox, uid) == 6
