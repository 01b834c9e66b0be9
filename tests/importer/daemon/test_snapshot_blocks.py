"""A snapshot read in many blocks (``importer.daemon.snapshots``): what a user of the Request
side would check when a snapshot spans several blocks, and when a genuine but faulty producer
lists an entity twice, in one block or in two (the merge statement then cannot touch the row
twice: the file is refused, not retried as if the database had failed)."""

from __future__ import annotations

import uuid

import pytest

from importer.daemon import snapshots
from tests.conftest import MakeImporter
from tests.importer.files import publish, publish_snapshot, quarantined, query, user_record
from tests.support import Sandbox

#: Small blocks, so that a few records span several of them.
BLOCK = 3
ORIGINAL = "o" * 30


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "BATCH_LINES", BLOCK)


async def hashes(sandbox: Sandbox) -> dict[uuid.UUID, tuple[str | None, bool]]:
    rows = await query(sandbox, "SELECT id, password_hash, deleted FROM synced_users")
    return {r["id"]: (r["password_hash"], r["deleted"]) for r in rows}


async def test_a_snapshot_of_many_blocks_merges_every_row_and_tombstones_only_the_absent(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    gone, kept = uuid.uuid4(), uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 1, user_record(gone, 1), user_record(kept, 1))
    await importer.scan_once()
    ids = [kept, *(uuid.uuid4() for _ in range(3 * BLOCK + 1))]  # four blocks, the last short
    records = [user_record(i, 2, password_hash=f"h-{i.hex}") for i in ids]
    publish_snapshot(sandbox, "user", records, changes_seq=1)
    result = await importer.scan_once()
    assert result.quarantined == 0
    held = await hashes(sandbox)
    assert {i: held[i] for i in ids} == {i: (f"h-{i.hex}", False) for i in ids}
    assert held[gone][1] is True  # absent from the snapshot, known to it: removed
    assert len(held) == len(ids) + 1


@pytest.mark.parametrize("apart", [1, BLOCK + 1], ids=["same block", "another block"])
async def test_an_entity_listed_twice_refuses_the_whole_snapshot(
    sandbox: Sandbox, make_importer: MakeImporter, apart: int
) -> None:
    """The second listing carries a newer version and another hash: the file is refused as a
    whole, and nothing of it is applied."""
    importer = make_importer()
    bob = uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 1, user_record(bob, 1, password_hash=ORIGINAL))
    await importer.scan_once()
    others = [user_record(uuid.uuid4(), 1) for _ in range(apart - 1)]
    records = [
        user_record(bob, 2, password_hash="f" * 30),
        *others,
        user_record(bob, 3, password_hash="s" * 30),
    ]
    published = publish_snapshot(sandbox, "user", records, changes_seq=1)
    result = await importer.scan_once()
    assert result.quarantined == 1
    assert await quarantined(sandbox) == {published.path.name: "invalid_schema"}
    held = await hashes(sandbox)
    assert held == {bob: (ORIGINAL, False)}  # nothing of the file applied, nothing removed
