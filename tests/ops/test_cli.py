"""The installed ``netsync`` command, run as operators run it, against the real services."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from arq.worker import Worker

from app.queue.client import JobQueue, redis_pool
from exchange.sealing import Identities, Recipients
from exchange.signing import Keyring, Signer
from exchange.writer import publish_export
from importer.daemon.loop import Importer
from netsync.config import to_libpq_url
from tests.commands import anetsync, as_json, netsync
from tests.factories import admin_headers, create_user
from tests.importer.files import user_record
from tests.support import Sandbox, eventually


async def request_db(sandbox: Sandbox, query: str, *args: object) -> None:
    conn = await asyncpg.connect(to_libpq_url(sandbox.services.request_url))
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()


def test_inspect_config_shows_the_effective_values_with_secrets_masked(sandbox: Sandbox) -> None:
    redis = "redis://:hunter2-secret@127.0.0.1:6379/0"
    result = netsync(sandbox, "inspect", "config", "--json", NETSYNC_REDIS_URL=redis)
    assert result.returncode == 0, result.stderr
    config = as_json(result)
    assert config["NETSYNC_SYNC_QUEUE"] == sandbox.queue
    assert config["NETSYNC_REDIS_URL"] == "redis://:********@127.0.0.1:6379/0"
    assert config["NETSYNC_SECRET_KEY"] == "********"
    assert config["NETSYNC_ARCHIVE_DIR"] == str(sandbox.archive)
    assert "hunter2" not in result.stdout
    assert sandbox.env()["NETSYNC_SECRET_KEY"] not in result.stdout
    table = netsync(sandbox, "inspect", "config", NETSYNC_REDIS_URL=redis)
    assert "NETSYNC_WORKER_METRICS_PORT" in table.stdout
    assert "hunter2" not in table.stdout


def test_keys_generate_writes_a_private_key_only_its_owner_reads_and_a_trusted_public_key(
    sandbox: Sandbox,
) -> None:
    private = sandbox.root / "new" / "signing.pem"
    result = netsync(
        sandbox, "keys", "generate", "--private-key", str(private), "--public-dir",
        str(sandbox.root / "pub"), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = as_json(result)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    public = Path(written["public_key"])
    assert public.name == f"{written['key_id']}.pub"
    # the importers trust exactly the key that signs
    signer = Signer.from_pem(private.read_bytes())
    assert Keyring.from_sources(public.parent).key_ids == [signer.key_id]
    again = netsync(sandbox, "keys", "generate", "--private-key", str(private))
    assert again.returncode == 1
    assert Signer.from_pem(private.read_bytes()).key_id == signer.key_id


def test_keys_generate_encryption_makes_a_pair_the_workers_seal_to_and_the_importer_opens(
    sandbox: Sandbox,
) -> None:
    private_dir, public_dir = sandbox.root / "decryption", sandbox.root / "recipients"
    result = netsync(
        sandbox, "keys", "generate", "--encryption", "--private-dir", str(private_dir),
        "--public-dir", str(public_dir), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = as_json(result)
    private = Path(written["private_key"])
    assert private.name == f"{written['key_id']}.age.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert "AGE-SECRET-KEY-" not in result.stdout + result.stderr  # never printed
    recipients = Recipients.from_sources(public_dir)
    identities = Identities.from_directory(private_dir, strict=True)
    assert recipients.key_ids == identities.key_ids == [written["key_id"]]
    assert identities.unseal(recipients.seal(b"body"), recipients.key_ids) == b"body"
    steps = netsync(sandbox, "keys", "rotate-encryption", "--private-dir", str(private_dir))
    assert steps.returncode == 0, steps.stderr
    assert "next to the old one" in steps.stdout
    assert "Seal to both" in steps.stdout
    assert len(list(private_dir.glob("*.age.key"))) == 2


def test_keys_rotate_makes_a_new_key_and_says_to_trust_it_before_signing_with_it(
    sandbox: Sandbox,
) -> None:
    result = netsync(sandbox, "keys", "rotate")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert f"replaces {sandbox.signer.key_id}" in text
    trust = text.index("NETSYNC_TRUSTED_KEYS_DIR")
    sign = text.index("NETSYNC_SIGNING_KEY_FILE=")
    assert trust < sign
    keys = sorted(p.name for p in (sandbox.root / "keys").glob("signing-*.pem"))
    assert len(keys) == 1
    assert (sandbox.root / "keys" / "signing.pem").read_bytes() == sandbox.signer.private_pem()


async def test_import_once_applies_a_folder_and_reports_what_it_quarantined(
    sandbox: Sandbox,
) -> None:
    folder = sandbox.root / "carried"
    folder.mkdir()
    users = [uuid.uuid4() for _ in range(5)]
    for seq, uid in enumerate(users, start=1):
        publish_export(
            folder, sandbox.signer, recipients=sandbox.recipients, stream="changes", seq=seq,
            kind="changes",
            file_id=uuid.uuid4(), created_at=datetime.now(UTC),
            records=[user_record(uid, 1)],
        )  # fmt: skip
    publish_export(
        folder, Signer.generate(), recipients=sandbox.recipients, stream="changes", seq=6,
        kind="changes",
        file_id=uuid.uuid4(), created_at=datetime.now(UTC), records=[],
    )  # fmt: skip
    result = netsync(sandbox, "import", "once", str(folder), "--json")
    assert result.returncode == 1, result.stderr  # a file was quarantined
    summary = as_json(result)
    assert (summary["files"], summary["applied"], summary["quarantined"]) == (6, 5, 1)
    assert summary["changes"] == 5
    assert sorted(os.listdir(sandbox.archive)) == [f"changes-{n:012d}.jsonl" for n in range(1, 6)]

    again = netsync(sandbox, "import", "once", str(folder))
    assert again.returncode == 0, again.stderr
    assert "importing" in again.stderr  # the progress bar


async def test_verify_reports_drift_until_both_networks_agree(
    api: httpx.AsyncClient, sandbox: Sandbox, worker: Worker, importer: Importer
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    users = [await create_user(api, admin, f"vera{i}") for i in range(3)]

    async def agree() -> subprocess.CompletedProcess[str] | None:
        result = await anetsync(sandbox, "verify", "--json")
        return result if result.returncode == 0 else None

    agreed = await eventually(agree, timeout=20, interval=0.2)
    assert isinstance(agreed, subprocess.CompletedProcess)
    report = as_json(agreed)
    assert report["agree"] is True
    assert report["entities"]["user"]["response"] == 4  # the admin and three users

    await worker.close()
    stale, gone = users[0]["id"], users[1]["id"]
    await request_db(sandbox, "UPDATE synced_users SET version = 0 WHERE id = $1", uuid.UUID(stale))
    await request_db(sandbox, "DELETE FROM synced_users WHERE id = $1", uuid.UUID(gone))
    extra = uuid.uuid4()
    await request_db(
        sandbox,
        "INSERT INTO synced_settings (id, version, deleted, event_id, changed_at, applied_at, key,"
        " value) VALUES ($1, 1, false, $2, now(), now(), 'x.y', '1')",
        extra,
        uuid.uuid4(),
    )
    result = netsync(sandbox, "verify", "--json")
    assert result.returncode == 1
    drift = {(d["entity"], d["id"], d["kind"]) for d in as_json(result)["drift"]}
    assert drift == {
        ("user", stale, "older"),
        ("user", gone, "missing"),
        ("setting", str(extra), "extra"),
    }
    table = netsync(sandbox, "verify")
    assert table.returncode == 1
    assert "3 entities differ" in table.stderr


async def test_export_run_changes_runs_the_sweeper_now_and_prints_its_job_id(
    api: httpx.AsyncClient, sandbox: Sandbox, worker: Worker
) -> None:
    result = await anetsync(sandbox, "export", "run", "changes", "--wait", "15", "--json")
    assert result.returncode == 0, result.stderr
    job = as_json(result)
    assert job["job_id"].startswith("export:changes:")
    assert (job["function"], job["queue"], job["state"]) == (
        "cron:sweep_outbox",
        sandbox.queue,
        "complete",
    )
    assert netsync(sandbox, "export", "run", "../etc").returncode == 2


def test_export_run_snapshots_enqueues_one_of_every_entity_type_for_a_new_site(
    sandbox: Sandbox,
) -> None:
    jobs = as_json(netsync(sandbox, "export", "run", "snapshots", "--json"))
    assert sorted(j["function"] for j in jobs) == [
        "export_profile_types",
        "export_settings",
        "export_users",
    ]
    assert {(j["queue"], j["state"]) for j in jobs} == {(sandbox.bulk_queue, "queued")}
    queued = as_json(netsync(sandbox, "inspect", "queued", "--queue", "bulk", "--json"))
    assert {j["job_id"] for j in jobs} <= {j["job_id"] for j in queued}


async def test_inspect_queued_and_active_read_the_queue_in_redis(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    first = await create_user(api, admin, "quentin")
    second = await create_user(api, admin, "quincy")
    result = netsync(sandbox, "inspect", "queued", "--json")
    assert result.returncode == 0, result.stderr
    queued = as_json(result)
    assert [j["job_id"] for j in queued] == [first["sync_job_id"], second["sync_job_id"]]
    assert {j["function"] for j in queued} == {"sync_changes"}
    table = netsync(sandbox, "inspect", "queued")
    assert first["sync_job_id"] in table.stdout

    settings = sandbox.response_settings()
    jobs = JobQueue(
        redis_pool(settings.redis_dsn, queue_name=sandbox.queue), sync_queue=sandbox.queue
    )
    try:  # pretend a worker holds the first job
        key = f"arq:in-progress:{first['sync_job_id']}"
        await jobs.redis.set(key, b"1", ex=30)
        active = as_json(netsync(sandbox, "inspect", "active", "--json"))
        await jobs.redis.delete(key)
    finally:
        await jobs.close()
    assert first["sync_job_id"] in [j["job_id"] for j in active]


def test_netsync_without_arguments_shows_its_commands(sandbox: Sandbox) -> None:
    result = netsync(sandbox)
    for command in ("inspect", "export", "import", "keys", "verify"):
        assert command in result.stdout


@pytest.fixture(autouse=True)
def _no_embedded_env(sandbox: Sandbox) -> None:
    """The CLI runs in the sandbox root, where no ``.netsync/embedded.env`` can leak in."""
    assert not (sandbox.root / ".netsync").exists()
