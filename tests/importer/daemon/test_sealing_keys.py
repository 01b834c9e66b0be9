"""The sealing keys, as an operator handles them: a private key others can read stops the
importer, a key rotation with files in flight loses nothing (a real importer process), a key
fixed by ``chmod`` is picked up while the daemon runs, and recipients are taken in their
canonical form without ever echoing a private key put in their place."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from exchange.sealing import (
    Identities,
    KeyFileError,
    Recipients,
    generate_identity,
    key_id_of,
    write_identity,
)
from importer.daemon.keys import TrustedKeys
from tests.importer.files import publish, quarantined, user_record, user_version
from tests.processes import Process, importer
from tests.support import TEST_RECIPIENT, Sandbox, eventually


def _run_importer_once(sandbox: Sandbox) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "importer", "--once"],
        env=sandbox.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_importer_refuses_to_start_with_a_private_key_others_can_read(
    sandbox: Sandbox,
) -> None:
    key = next(sandbox.decryption_dir.glob("*.age.key"))
    key.chmod(0o644)
    refused = _run_importer_once(sandbox)
    assert refused.returncode == 2, refused.stderr
    assert "refusing to start" in refused.stderr
    assert key.name in refused.stderr
    key.chmod(0o640)  # group-readable for a key-holding group is allowed
    started = _run_importer_once(sandbox)
    assert started.returncode == 0, started.stderr


@pytest.mark.slow
async def test_rotating_the_request_key_with_files_in_flight_loses_nothing(
    sandbox: Sandbox,
) -> None:
    users = [uuid.uuid4() for _ in range(5)]
    new_identity, new_recipient = generate_identity()
    old_only = Recipients.of([TEST_RECIPIENT])
    both = Recipients.of([TEST_RECIPIENT, new_recipient])
    new_only = Recipients.of([new_recipient])
    old_key = next(sandbox.decryption_dir.glob("*.age.key"))

    # in flight before the rotation starts: sealed to the old key only
    publish(sandbox.exports, sandbox.signer, 1, user_record(users[0], 1), recipients=old_only)
    # 1. the importers get the new private key, next to the old one
    write_identity(sandbox.decryption_dir, new_identity, new_recipient)
    # 2. the workers seal to both
    publish(sandbox.exports, sandbox.signer, 2, user_record(users[1], 1), recipients=both)
    proc: Process = importer(sandbox).start()
    try:
        await eventually(lambda: not list(sandbox.exports.glob("*.jsonl")), timeout=20)
        # 3. the workers seal to the new key only
        publish(sandbox.exports, sandbox.signer, 3, user_record(users[2], 1), recipients=new_only)
        await eventually(lambda: not list(sandbox.exports.glob("*.jsonl")), timeout=20)
        # 4. no old-only file is left: the old private key goes (the daemon notices by itself)
        old_key.unlink()
        publish(sandbox.exports, sandbox.signer, 4, user_record(users[3], 1), recipients=new_only)
        await eventually(lambda: not list(sandbox.exports.glob("*.jsonl")), timeout=20)
        # a straggler sealed to the old key only, after the old key is gone: refused, named
        late = publish(
            sandbox.exports, sandbox.signer, 5, user_record(users[4], 1), recipients=old_only
        )

        async def refused() -> bool:
            return (await quarantined(sandbox)).get(late.name) == "unknown_recipient"

        await eventually(refused, timeout=20)
    finally:
        proc.stop()
    for uid in users[:4]:
        assert await user_version(sandbox, uid) == 1
    assert await user_version(sandbox, users[4]) is None
    log = proc.output()
    assert "decryption keys reloaded" in log
    assert key_id_of(TEST_RECIPIENT) in log  # the key the straggler needs is named
    assert Identities.of([new_identity]).key_ids[0] in log


def test_a_key_fixed_with_chmod_is_picked_up_and_an_emptied_directory_keeps_the_keys(
    tmp_path: Path,
) -> None:

    keys = tmp_path / "decryption"
    identity, recipient = generate_identity()
    first = write_identity(keys, identity, recipient)
    trusted = TrustedKeys(None, [], identities_dir=keys)
    assert trusted.identities.key_ids == [key_id_of(recipient)]

    second_identity, second = generate_identity()
    added = write_identity(keys, second_identity, second)
    added.chmod(0o644)  # copied in too open: skipped, with a log line
    trusted.refresh()
    assert key_id_of(second) not in trusted.identities.key_ids
    added.chmod(0o600)  # fixed: only the mode changed, and that is seen
    assert trusted.refresh()
    assert set(trusted.identities.key_ids) == {key_id_of(recipient), key_id_of(second)}

    for path in (first, added):  # a remount that shows an empty directory for a moment
        path.rename(tmp_path / path.name)
    trusted.refresh()
    assert set(trusted.identities.key_ids) == {key_id_of(recipient), key_id_of(second)}


def test_recipients_are_taken_in_canonical_form_and_a_private_key_is_never_echoed() -> None:
    identity, recipient = generate_identity()
    upper = Recipients.of([recipient.upper()])  # bech32 is case-insensitive
    assert upper.key_ids == Identities.of([identity]).key_ids
    with pytest.raises(KeyFileError) as refused:
        Recipients.of([identity])
    assert identity[15:] not in str(refused.value)
    assert "private key" in str(refused.value)
