"""Key rotation without downtime: the running daemon trusts a public key as soon as it lands in
the trusted keys directory, and stops trusting one as soon as it is removed."""

from __future__ import annotations

import uuid

from exchange.signing import Signer
from importer.daemon.loop import Importer
from tests.importer.files import export_names, publish, quarantined, user_record, user_version
from tests.support import Sandbox, eventually


async def test_keys_rotate_while_the_daemon_runs(sandbox: Sandbox, daemon: Importer) -> None:
    trusted = sandbox.root / "keys" / "trusted"
    old, new = sandbox.signer, Signer.generate()
    uid = uuid.uuid4()
    publish(sandbox.exports, old, 1, user_record(uid, 1))
    await eventually(lambda: user_version(sandbox, uid))

    # 1. the new public key is added to the importers while it runs
    (trusted / f"{new.key_id}.pub").write_bytes(new.public_pem())
    # 2. the Response side switches to the new private key; files signed with either apply
    publish(sandbox.exports, new, 2, user_record(uid, 2))
    publish(sandbox.exports, old, 3, user_record(uid, 3))  # an old file still in transit

    async def both_applied() -> bool:
        return await user_version(sandbox, uid) == 3 and not export_names(sandbox.exports)

    await eventually(both_applied)
    assert await quarantined(sandbox) == {}

    # 3. later the old public key is removed: its files are refused from then on
    (trusted / f"{old.key_id}.pub").unlink()
    await eventually(lambda: daemon.keyring.key_ids == [new.key_id])
    stale = publish(sandbox.exports, old, 4, user_record(uid, 4))
    publish(sandbox.exports, new, 5, user_record(uid, 5))

    async def settled() -> bool:
        return await user_version(sandbox, uid) == 5 and not export_names(sandbox.exports)

    await eventually(settled)
    assert await quarantined(sandbox) == {stale.name: "unknown_key"}


async def test_a_broken_key_file_is_skipped_and_the_others_stay_trusted(
    sandbox: Sandbox, daemon: Importer
) -> None:
    trusted = sandbox.root / "keys" / "trusted"
    (trusted / "broken.pub").write_bytes(b"-----BEGIN PUBLIC KEY-----\nnope\n")
    daemon.request_key_reload()  # what SIGHUP does
    uid = uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 1, user_record(uid, 1))
    await eventually(lambda: user_version(sandbox, uid))
    assert daemon.keyring.key_ids == [sandbox.signer.key_id]
