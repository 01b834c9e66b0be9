"""The importer's own files under attack: links planted in the quarantine, sidecars that would
stall a start, junk names and keys, a failing quarantine or spool, the archive and its pruning.

Each test is the attack itself; each asserts that nothing outside the importer's own directories
was written, nothing stalled, and that the next genuine file still applies. Forged and replayed
files are in ``test_boundary.py``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from exchange.format import FileName
from exchange.signing import Keyring
from importer.config import RequestSettings
from importer.daemon.failures import LocalFault
from tests.importer.conftest import MakeImporter
from tests.importer.files import (
    count,
    forged_trailer,
    header,
    publish,
    publish_settings_snapshot,
    quarantined,
    query,
    setting_record,
    user_record,
    user_version,
)
from tests.support import Sandbox


async def test_a_planted_link_in_the_quarantine_never_redirects_a_write(
    sandbox: Sandbox, make_importer: MakeImporter, tmp_path: Path
) -> None:
    importer = make_importer()
    victim, other = tmp_path / "victim.conf", tmp_path / "other.conf"
    victim.write_bytes(b"precious\n")
    other.write_bytes(b"also precious\n")
    name = FileName("changes", 5).name
    (importer.quarantine_dir / f"{name}.reason.json").symlink_to(victim)
    (importer.quarantine_dir / name).symlink_to(other)
    (sandbox.exports / name).write_bytes(header(5) + b"{}\n" + forged_trailer(sandbox.signer))

    result = await importer.scan_once()
    assert result.quarantined == 1
    assert victim.read_bytes() == b"precious\n"
    assert other.read_bytes() == b"also precious\n"
    rows = await query(sandbox, "SELECT stored_as, reason FROM quarantined_files")
    assert [(r["reason"]) for r in rows] == ["bad_signature"]
    stored = importer.quarantine_dir / rows[0]["stored_as"]
    assert stored.name != name
    assert not stored.is_symlink()
    assert (
        orjson.loads((importer.quarantine_dir / f"{stored.name}.reason.json").read_bytes())[
            "reason"
        ]
        == "bad_signature"
    )


async def test_sidecars_linked_to_dev_zero_or_a_fifo_do_not_stall_the_start(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    (importer.quarantine_dir / "a.reason.json").symlink_to("/dev/zero")
    os.mkfifo(importer.quarantine_dir / "b.reason.json")
    with (importer.quarantine_dir / "c.reason.json").open("wb") as fh:
        fh.truncate(1 << 30)
    uid = uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 1, user_record(uid, 1))
    result = await asyncio.wait_for(importer.scan_once(), 10)  # reconcile reads the sidecars
    assert result.applied == 1
    assert await user_version(sandbox, uid) == 1


def test_the_importer_keeps_its_own_files_outside_the_exports_directory_by_default(
    tmp_path: Path,
) -> None:
    settings = RequestSettings(
        _env_file=None,
        env="test",
        state_dir=tmp_path / "state",
        exports_dir=tmp_path / "exports",
    )
    exports = settings.exports_path.resolve()
    for path in (settings.archive_path, settings.quarantine_path, settings.spool_path):
        assert not path.resolve().is_relative_to(exports), path


async def test_files_are_archived_as_verified_and_the_read_ahead_is_bounded_by_bytes(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer(batch_max_bytes=2000)
    users = [uuid.uuid4() for _ in range(6)]
    published = [
        publish(sandbox.exports, sandbox.signer, seq, user_record(uid, 1))
        for seq, uid in enumerate(users, start=1)
    ]
    originals = {p.path.name: p.path.read_bytes() for p in published}
    size = len(next(iter(originals.values())))
    names = sorted(FileName("changes", n) for n in range(1, 7))
    reads, next_index = importer.reader.read_chunk(names, 0)
    assert len(reads) == -(-2000 // size) < 6, (len(reads), size)
    assert next_index == len(reads)

    result = await importer.scan_once()
    assert result.applied == 6
    for file, data in originals.items():
        assert (importer.archive_dir / file).read_bytes() == data
        assert not (sandbox.exports / file).exists()
    assert oct((importer.archive_dir / "changes-000000000001.jsonl").stat().st_mode & 0o777) == (
        "0o640"
    )


async def test_files_read_ahead_past_a_full_batch_are_read_again_and_judged_once(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    """Small files are taken a group ahead while the unsealing child decrypts the group before:
    a group taken past the batch's end (here: three records a batch) is dropped, read again
    with the next batch, and applied or refused exactly once."""
    importer = make_importer(batch_max_records=3)
    uid = uuid.uuid4()
    for seq in range(1, 41):
        if seq == 35:  # a forged file in the second group, the one taken ahead
            (sandbox.exports / FileName("changes", seq).name).write_bytes(b"forged\n")
        else:
            publish(sandbox.exports, sandbox.signer, seq, user_record(uid, seq))
    taken: list[int] = []
    verified = importer.reader.verified

    def counting(name: FileName) -> object:
        taken.append(name.seq)
        return verified(name)

    importer.reader.verified = counting  # type: ignore[assignment,method-assign]
    names = sorted(FileName("changes", n) for n in range(1, 41))
    reads, index = importer.reader.read_chunk(names, 0)
    assert (len(reads), index) == (3, 3)  # not the 35 files it took
    assert [name.seq for name, _ in reads] == [1, 2, 3]
    assert taken == list(range(1, 36))  # a group of 32, then one ahead, up to the forged file

    result = await importer.scan_once()
    assert (result.applied, result.quarantined, result.duplicates) == (39, 1, 0)
    assert await quarantined(sandbox) == {FileName("changes", 35).name: "truncated"}
    assert await count(sandbox, "quarantined_files") == 1
    assert await count(sandbox, "import_ledger") == 39
    assert await user_version(sandbox, uid) == 40
    assert [n for n in os.listdir(sandbox.exports) if not n.startswith(".")] == []


async def test_a_local_fault_on_a_file_read_ahead_waits_until_a_batch_reaches_it(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    """An EIO on a file of the group taken ahead does not cost the batch before it, and a full
    batch leaves the unsealing child running for the next one."""
    from importer.daemon.failures import LocalFault

    importer = make_importer(batch_max_records=3)
    uid = uuid.uuid4()
    for seq in range(1, 41):
        publish(sandbox.exports, sandbox.signer, seq, user_record(uid, seq))
    verified = importer.reader.verified

    def failing_at_33(name: FileName) -> object:
        if name.seq == 33:
            raise LocalFault("reading changes-33: EIO")
        return verified(name)

    importer.reader.verified = failing_at_33  # type: ignore[assignment,method-assign]
    names = sorted(FileName("changes", n) for n in range(1, 41))
    reads, index = importer.reader.read_chunk(names, 0)
    assert (len(reads), index) == (3, 3)
    child = importer.reader.worker._proc
    assert child is not None
    assert child.poll() is None  # the batch taken ahead was received, not killed
    reads, index = importer.reader.read_chunk(names, 3)
    assert (len(reads), index) == (3, 6)
    assert importer.reader.worker._proc is child
    with pytest.raises(LocalFault, match="EIO"):
        importer.reader.read_chunk(names, 32)  # a batch that reaches it


def _importer_once(
    sandbox: Sandbox, *, drop_file_capabilities: bool = False
) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "importer", "--once"]
    if drop_file_capabilities:  # file modes apply, as they do to any user but root
        argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *argv]
    return subprocess.Popen(
        argv, env=sandbox.env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


async def test_an_unreadable_snapshot_is_quarantined_not_retried_forever(
    sandbox: Sandbox,
) -> None:
    # Before: EACCES on a streamed file looked like "database unavailable": retried forever.
    # The importer runs without the capability to override file modes (as a non-root user).
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (apt-get install util-linux)")
    if "host=/" in sandbox.services.request_url or "@/" in sandbox.services.request_url:
        pytest.skip(
            "the importer without file capabilities cannot reach an embedded PostgreSQL's"
            " socket: set NETSYNC_TEST_DATABASE_URL to a TCP URL (as .ci/run does)"
        )
    locked = sandbox.exports / FileName("snapshot_users", 1).name
    locked.write_bytes(b"secret\n")
    locked.chmod(0o000)
    uid = uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 1, user_record(uid, 1))
    proc = _importer_once(sandbox, drop_file_capabilities=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert (await quarantined(sandbox))[locked.name] == "unreadable"
    assert await user_version(sandbox, uid) == 1
    assert not locked.exists()


async def test_one_junk_key_file_does_not_stop_the_importer_from_starting(
    sandbox: Sandbox,
) -> None:
    trusted = sandbox.root / "keys" / "trusted"
    (trusted / "junk.pub").write_bytes(b"this is not a key\n")
    (trusted / "empty.pub").write_bytes(b"")
    os.mkfifo(trusted / "fifo.pub")
    assert Keyring.from_sources(trusted).key_ids == [sandbox.signer.key_id]
    uid = uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 1, user_record(uid, 1))
    proc = _importer_once(sandbox)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "ignoring a trusted key file" in out
    assert await user_version(sandbox, uid) == 1


async def test_a_flood_of_junk_names_is_recorded_once_and_genuine_files_still_apply(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    flood = 100_000
    for i in range(flood):
        os.close(os.open(sandbox.exports / f"junk-{i:06d}.bin", os.O_CREAT | os.O_WRONLY, 0o644))
    uid = uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 1, user_record(uid, 1))
    started = time.monotonic()
    first = await importer.scan_once()
    first_s = time.monotonic() - started
    started = time.monotonic()
    await importer.scan_once()
    again_s = time.monotonic() - started
    print(f"\n{flood} junk names: first scan {first_s:.1f} s, next scan {again_s:.2f} s")
    assert first.applied == 1
    assert len(first.ignored) == flood
    assert await count(sandbox, "quarantined_files") == flood
    assert await user_version(sandbox, uid) == 1
    assert again_s < 5


async def test_the_archive_and_quarantine_are_pruned_past_their_retention(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer(archive_retention_days=1, quarantine_retention_days=2)
    publish(sandbox.exports, sandbox.signer, 1, user_record(uuid.uuid4(), 1))
    (sandbox.exports / FileName("changes", 2).name).write_bytes(b"junk\n")
    await importer.scan_once()
    archived = importer.archive_dir / FileName("changes", 1).name
    kept = importer.quarantine_dir / FileName("changes", 2).name
    assert archived.exists()
    assert kept.exists()
    link = importer.archive_dir / "a-link"
    link.symlink_to(kept)
    day = 86_400
    os.utime(archived, (time.time() - 1.5 * day,) * 2)
    os.utime(kept, (time.time() - 1.5 * day,) * 2)
    files = {"archive": 1, "quarantine": 0}
    assert {k: v for k, v in (await importer.prune()).items() if k in files} == files
    os.utime(kept, (time.time() - 3 * day,) * 2)
    files = {"archive": 0, "quarantine": 1}
    assert {k: v for k, v in (await importer.prune()).items() if k in files} == files
    assert not archived.exists()
    assert not kept.exists()
    assert link.is_symlink()  # never followed, never removed


async def test_the_daemon_survives_a_failing_quarantine_and_keeps_applying(
    sandbox: Sandbox, make_importer: MakeImporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    importer = make_importer(rescan_interval_s=0.2, watch_files=False)
    calls = 0
    real = importer.files.move_to_quarantine

    def flaky(name: str, rejected: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:  # e.g. the entry was swapped for a directory under our feet
            raise IsADirectoryError(21, "Is a directory")
        return real(name, rejected)  # type: ignore[arg-type]

    monkeypatch.setattr(importer.files, "move_to_quarantine", flaky)
    (sandbox.exports / FileName("changes", 1).name).write_bytes(b"junk\n")
    uid = uuid.uuid4()
    publish(sandbox.exports, sandbox.signer, 2, user_record(uid, 1))
    stop = asyncio.Event()
    task = asyncio.create_task(importer.run(stop))
    try:
        for _ in range(100):
            if await user_version(sandbox, uid) == 1 and calls >= 2:
                break
            await asyncio.sleep(0.1)
        assert await user_version(sandbox, uid) == 1
        assert (await quarantined(sandbox)).get(FileName("changes", 1).name) == "truncated"
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_missing_spool_keeps_a_genuine_snapshot_and_leaks_nothing(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    from exchange.intake import MEMORY_COPY_BYTES

    importer = make_importer()
    published = publish_settings_snapshot(
        sandbox,
        [
            setting_record(f"big.key_{i}", "x" * 60_000)
            for i in range(MEMORY_COPY_BYTES // 60_000 + 10)
        ],
    )
    shutil.rmtree(importer.files.spool_dir)
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(LocalFault):
            await importer.scan_once()
    assert len(os.listdir("/proc/self/fd")) <= fds
    assert published.path.exists()  # nothing was decided about it
    assert await count(sandbox, "quarantined_files") == 0
    importer.prepare()  # the spool is back
    assert (await importer.scan_once()).applied == 1


async def test_a_replayed_genuine_file_is_not_archived_again(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer()
    data = publish(sandbox.exports, sandbox.signer, 1, user_record(uuid.uuid4(), 1))
    original = data.path.read_bytes()
    assert (await importer.scan_once()).applied == 1
    for _ in range(20):
        data.path.write_bytes(original)
        assert (await importer.scan_once()).duplicates == 1
    assert os.listdir(importer.archive_dir) == [data.path.name]
    assert not data.path.exists()


async def test_refused_files_count_against_the_read_ahead_and_unknown_streams_are_foreign(
    sandbox: Sandbox, make_importer: MakeImporter
) -> None:
    importer = make_importer(batch_max_files=10)
    for seq in range(1, 31):
        (sandbox.exports / FileName("changes", seq).name).write_bytes(b"junk\n")
    names = sorted(FileName("changes", seq) for seq in range(1, 31))
    reads, index = importer.reader.read_chunk(names, 0)
    assert (len(reads), index) == (10, 10)
    (sandbox.exports / FileName("aaa", 1).name).write_bytes(b"x" * 100)
    result = await importer.scan_once()
    assert result.ignored == [FileName("aaa", 1).name]
    assert (await quarantined(sandbox))[FileName("aaa", 1).name] == "not_an_export_name"
