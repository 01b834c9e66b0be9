"""Disaster recovery with real processes and real backups: the Response database restored from a
``pg_dump`` taken before some changes. The sync heals itself: new changes reach the Request side
within seconds, the Request side comes back to exactly the restored system of record, and both
sides say what happened."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import pytest

from tests.backups import dump, restore
from tests.commands import anetsync
from tests.processes import (
    ADMIN_PASSWORD,
    Process,
    bulk_worker,
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


async def signs_in(client: httpx.AsyncClient, req: str, username: str, password: str) -> bool:
    login = await client.post(
        f"{req}/api/v1/auth/login", json={"username": username, "password": password}
    )
    return login.status_code == 200


@dataclass(frozen=True)
class Admin:
    """The Response API's administrator, as the tests change users through it."""

    client: httpx.AsyncClient
    api: str
    headers: dict[str, str]

    @classmethod
    async def sign_in(cls, client: httpx.AsyncClient, api: str) -> Admin:
        bearer = await token(client, api, "admin", ADMIN_PASSWORD)
        return cls(client, api, {"Authorization": f"Bearer {bearer}"})

    async def create(self, username: str, password: str) -> str:
        made = await self.client.post(
            f"{self.api}/api/v1/users",
            json={"username": username, "password": password},
            headers=self.headers,
        )
        assert made.status_code == 201, made.text
        return str(made.json()["id"])

    async def reset(self, user_id: str, password: str) -> None:
        done = await self.client.post(
            f"{self.api}/api/v1/users/{user_id}/reset-password",
            json={"new_password": password},
            headers=self.headers,
        )
        assert done.status_code == 200, done.text


def stop(procs: list[Process], *names: str) -> None:
    """Stop the processes whose names start so: one network's side, before its restore."""
    for proc in procs:
        if proc.name.startswith(names):
            proc.stop()


async def test_a_response_database_restored_from_a_backup_heals_the_request_side(
    sandbox: Sandbox, procs: list[Process]
) -> None:
    api, req = await start_system(sandbox, procs)
    procs.append(bulk_worker(sandbox).start())
    async with httpx.AsyncClient(timeout=10) as client:
        admin = await Admin.sign_in(client, api)
        ann = await admin.create("ann", "before the backup 1")
        eve = await admin.create("eve", "before the backup 1")
        cid = await admin.create("cid", "before the backup 1")
        await eventually(lambda: signs_in(client, req, "cid", "before the backup 1"), timeout=15)
        await dump(sandbox.services.response_url, sandbox.root / "response.dump")

        # after the backup: changes the restore will undo, all of them synced
        await admin.reset(ann, "after the backup 22")
        await admin.reset(eve, "after the backup 22")
        await admin.create("bob", "after the backup 22")
        deleted = await client.delete(f"{api}/api/v1/users/{cid}", headers=admin.headers)
        assert deleted.status_code == 200, deleted.text
        await eventually(lambda: signs_in(client, req, "bob", "after the backup 22"), timeout=15)
        await eventually(lambda: signs_in(client, req, "eve", "after the backup 22"), timeout=15)

        # the disaster: the Response side stops, its database comes back from the backup
        stop(procs, "response-api", "worker", "bulk")
        await restore(sandbox.services.response_url, sandbox.root / "response.dump")
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        procs += [
            response_api(sandbox, port).start(),
            worker(sandbox, "worker-after-restore").start(),
            bulk_worker(sandbox, "bulk-worker-after-restore").start(),
        ]
        await wait_http(f"{api}/ready")
        restarted = time.monotonic()
        admin = await Admin.sign_in(client, api)

        # a password change after the restore reaches the Request side within seconds, though
        # the restored database versions it below what the Request side holds
        changed = time.monotonic()
        await admin.reset(ann, "after the restore 333")
        await eventually(lambda: signs_in(client, req, "ann", "after the restore 333"), timeout=15)
        crossed_s = time.monotonic() - changed

        # and the Request side comes back to the restored system of record
        async def restored() -> bool:
            return (
                await signs_in(client, req, "eve", "before the backup 1")
                and not await signs_in(client, req, "bob", "after the backup 22")
                and await signs_in(client, req, "cid", "before the backup 1")
            )

        await eventually(restored, timeout=60, interval=0.5)
        healed_s = time.monotonic() - restarted
        assert not await signs_in(client, req, "eve", "after the backup 22")
        assert not await signs_in(client, req, "ann", "after the backup 22")

        verify = await anetsync(sandbox, "verify", "--json")
        assert verify.returncode == 0, verify.stdout + verify.stderr

        # what the operators see: the Request side's status and log, the Response side's log
        operator = await token_on_request(client, req)
        status = (await client.get(f"{req}/api/v1/sync/status", headers=operator)).json()
        assert status["generation"] > 0
        assert [g["generation"] for g in status["generations"]] == [status["generation"]]
        assert status["files_quarantined"] == 0
        importer_log = next(p for p in procs if p.name == "importer").output()
        assert "began a new generation" in importer_log
        response_logs = "".join(p.output() for p in procs if p.name.endswith("after-restore"))
        assert "began a new export generation" in response_logs
    print(
        f"\nrestore: change crossed {crossed_s:.2f} s after it was made; restored state on the "
        f"Request side {healed_s:.2f} s after the restart"
    )


async def token_on_request(client: httpx.AsyncClient, req: str) -> dict[str, str]:
    login = await client.post(
        f"{req}/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


async def test_a_request_database_restored_from_a_backup_catches_up_within_a_snapshot_cycle(
    sandbox: Sandbox, procs: list[Process]
) -> None:
    cycle = "*/10s"
    schedule = {
        f"NETSYNC_SCHEDULE_EXPORT_{name}": cycle for name in ("USERS", "SETTINGS", "PROFILE_TYPES")
    }
    api, req = await start_system(sandbox, procs)
    procs.append(bulk_worker(sandbox, **schedule).start())
    async with httpx.AsyncClient(timeout=10) as client:
        admin = await Admin.sign_in(client, api)
        eve = await admin.create("eve", "before the backup 1")
        await eventually(lambda: signs_in(client, req, "eve", "before the backup 1"), timeout=15)
        await dump(sandbox.services.request_url, sandbox.root / "request.dump")

        await admin.reset(eve, "after the backup 22")
        await admin.create("bob", "after the backup 22")
        await eventually(lambda: signs_in(client, req, "bob", "after the backup 22"), timeout=15)

        stop(procs, "importer", "request-api")
        await restore(sandbox.services.request_url, sandbox.root / "request.dump")
        held = await fetch(sandbox.services.request_url, "SELECT username FROM synced_users")
        assert "bob" not in {r["username"] for r in held}  # the backup's state
        port = free_port()
        req = f"http://127.0.0.1:{port}"
        procs += [
            importer(sandbox, "importer-after-restore").start(),
            request_api(sandbox, port).start(),
        ]
        await wait_http(f"{req}/ready")
        restarted = time.monotonic()

        async def caught_up() -> bool:
            return await signs_in(client, req, "eve", "after the backup 22") and await signs_in(
                client, req, "bob", "after the backup 22"
            )

        await eventually(caught_up, timeout=40, interval=0.5)
        caught_up_s = time.monotonic() - restarted
        verify = await anetsync(sandbox, "verify", "--json")
        assert verify.returncode == 0, verify.stdout + verify.stderr
    print(f"\nrequest restore: caught up {caught_up_s:.2f} s after the restart ({cycle} snapshots)")
