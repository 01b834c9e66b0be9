"""The system as it runs in production: each process a real OS process, talking through real
PostgreSQL, Redis and files. Slower than the in-process tests, so only what needs it is here."""

from __future__ import annotations

import os
import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from exchange.writer import publish_export
from ops.embedded import EmbeddedRedis
from tests.processes import (
    ADMIN_PASSWORD,
    Process,
    bootstrap_admin,
    importer,
    request_api,
    response_api,
    start_system,
    token,
    wait_http,
    worker,
)
from tests.queries import fetch
from tests.support import Sandbox, eventually, free_port

pytestmark = pytest.mark.slow


async def test_a_password_change_crosses_between_real_processes(
    sandbox: Sandbox, procs: list[Process]
) -> None:
    api, req = await start_system(sandbox, procs)
    async with httpx.AsyncClient() as client:
        admin = {"Authorization": f"Bearer {await token(client, api, 'admin', ADMIN_PASSWORD)}"}
        created = await client.post(
            f"{api}/api/v1/users",
            json={"username": "grace", "password": "first pass phrase"},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        reset = await client.post(
            f"{api}/api/v1/users/{created.json()['id']}/reset-password",
            json={"new_password": "second pass phrase"},
            headers=admin,
        )
        assert reset.status_code == 200

        async def signs_in() -> bool:
            login = await client.post(
                f"{req}/api/v1/auth/login",
                json={"username": "grace", "password": "second pass phrase"},
            )
            return login.status_code == 200

        await eventually(signs_in, timeout=15)
        old = await client.post(
            f"{req}/api/v1/auth/login", json={"username": "grace", "password": "first pass phrase"}
        )
        assert old.status_code == 401
        job = await client.get(f"{api}/api/v1/jobs/{reset.json()['sync_job_id']}", headers=admin)
        assert job.json()["state"] == "complete"


async def _request_db(sandbox: Sandbox, query: str) -> list[asyncpg.Record]:
    return await fetch(sandbox.services.request_url, query)


async def test_an_importer_killed_mid_apply_applies_every_file_exactly_once_after_restart(
    sandbox: Sandbox, procs: list[Process]
) -> None:
    files, user_ids = 1500, [uuid.uuid4() for _ in range(50)]
    for seq in range(1, files + 1):
        uid = user_ids[seq % len(user_ids)]
        publish_export(
            sandbox.exports,
            sandbox.signer,
            recipients=sandbox.recipients,
            stream="changes",
            seq=seq,
            kind="changes",
            file_id=uuid.uuid4(),
            created_at=datetime.now(UTC),
            records=[
                {
                    "event_id": str(uuid.uuid4()),
                    "entity": "user",
                    "entity_id": str(uid),
                    "version": seq,
                    "op": "upsert",
                    "occurred_at": datetime.now(UTC).isoformat(),
                    "data": {
                        "username": f"user-{uid.hex[:6]}",
                        "password_hash": f"$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$seq{seq:08d}",
                        "role": "user",
                        "is_active": True,
                    },
                }
            ],
        )

    async def applied() -> int:
        return int((await _request_db(sandbox, "SELECT count(*) AS n FROM import_ledger"))[0]["n"])

    first = importer(sandbox).start()
    procs.append(first)
    await eventually(applied, timeout=30, interval=0.005)
    first.kill(signal.SIGKILL)
    at_kill = await applied()
    assert 0 < at_kill < files, "the importer must be killed mid-burst for this test to mean much"

    procs.append(importer(sandbox, name="importer-restarted").start())

    async def all_applied() -> bool:
        return await applied() == files

    await eventually(all_applied, timeout=60)
    rows = await _request_db(
        sandbox,
        "SELECT sum(applied_changes) AS changes, count(DISTINCT seq) AS seqs FROM import_ledger",
    )
    assert rows[0]["seqs"] == files
    # every file changed its user: a file applied twice would have been refused by the ledger,
    # and a file lost would leave a user behind its last version
    users = await _request_db(sandbox, "SELECT id, version FROM synced_users")
    expected = {
        uid: max(s for s in range(1, files + 1) if user_ids[s % 50] == uid) for uid in user_ids
    }
    assert {r["id"]: r["version"] for r in users} == expected

    async def exports_empty() -> bool:
        return not [n for n in os.listdir(sandbox.exports) if n.endswith(".jsonl")]

    await eventually(exports_empty, timeout=15)


async def test_a_password_changed_while_redis_is_down_syncs_when_it_returns(
    sandbox: Sandbox, procs: list[Process]
) -> None:
    redis_dir = Path("/tmp") / f"nsr-{uuid.uuid4().hex[:8]}"  # Unix socket paths must be short
    redis = EmbeddedRedis(redis_dir)
    env = {"NETSYNC_REDIS_URL": redis.url()}
    try:
        api_port, request_port = free_port(), free_port()
        await bootstrap_admin(sandbox, **env)
        procs += [
            response_api(sandbox, api_port, **env).start(),
            worker(sandbox, **env).start(),
            importer(sandbox, **env).start(),
            request_api(sandbox, request_port, **env).start(),
        ]
        api, req = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{request_port}"
        await wait_http(f"{api}/ready")
        await wait_http(f"{req}/ready")
        async with httpx.AsyncClient(timeout=10) as client:
            admin = {"Authorization": f"Bearer {await token(client, api, 'admin', ADMIN_PASSWORD)}"}
            created = await client.post(
                f"{api}/api/v1/users",
                json={"username": "heidi", "password": "first pass phrase"},
                headers=admin,
            )
            assert created.status_code == 201

            redis.stop()  # Redis goes away between the commit and the enqueue of the next change
            reset = await client.post(
                f"{api}/api/v1/users/{created.json()['id']}/reset-password",
                json={"new_password": "changed while redis was down"},
                headers=admin,
            )
            assert reset.status_code == 200, reset.text
            assert (await client.get(f"{api}/ready")).status_code == 503

            redis = EmbeddedRedis(redis_dir)  # same data directory, same socket

            async def signs_in() -> bool:
                login = await client.post(
                    f"{req}/api/v1/auth/login",
                    json={"username": "heidi", "password": "changed while redis was down"},
                )
                return login.status_code == 200

            await eventually(signs_in, timeout=30, interval=0.2)
            await wait_http(f"{api}/ready")
    finally:
        for proc in reversed(procs):
            proc.stop()
        procs.clear()
        redis.stop()
