"""compose.yaml brought up for real: the images built from Debian packages by
deploy/images/build.sh (no registry, no PyPI inside a container), both networks in containers,
the README's example session run against them over the ports published on 127.0.0.1, then a sync
worker killed outright while passwords change, and every change still reaching the Request side.

Why: tests/deploy/test_deploy_compose.py and tests/deploy/test_deploy_image.py read compose.yaml and
the Dockerfile offline. Only a real ``docker compose up`` shows that the images build; that every
process starts as uid 10001 on a read-only root file system with its keys and secrets where compose
mounts them; that the PostgreSQL and Redis images honour what compose passes them; that every
healthcheck passes; and that the sync survives a worker's death with the containers' own ordering
and restarts.

It needs Docker with the compose plugin, and a cold build takes minutes, so it is not part of
``./run test``: it carries the ``compose`` marker, which pyproject.toml deselects, and
``./run test-compose`` runs it. Without Docker it skips, naming the command that installs and
starts it (deploy/images/install-docker.sh); with NETSYNC_COMPOSE_REQUIRED=1 (CI) that is a
failure instead. The NETSYNC_*_IMAGE variables name other images, as they do for build.sh.
"""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.compose.stack import (
    RECOVERY_DEADLINE_S,
    SYNC_DEADLINE_S,
    Session,
    Stack,
    assert_all_healthy,
    bearer,
    run,
    say,
)

pytestmark = [pytest.mark.compose, pytest.mark.timeout(3600)]


def test_the_readme_session_runs_against_the_containers(
    stack: Stack, session: Session, pytestconfig: pytest.Config
) -> None:
    assert_all_healthy(stack)
    alice = session.create_user("alice", "correct horse battery")
    changed = session.reset_password(alice, "a brand new secret 42")
    job = session.job_state(changed["sync_job_id"], SYNC_DEADLINE_S)
    assert job["state"] == "complete", job
    assert job["result"]["stream"] == "changes"
    lag = session.wait_synced(alice, changed["version"], SYNC_DEADLINE_S)
    signed_in = session.sign_in_on_request("alice", "a brand new secret 42")
    assert signed_in["authenticated"] is True
    assert signed_in["user_id"] == alice
    assert signed_in["role"] == "user"
    say(pytestconfig, f"a changed password reached the Request side {lag:.2f} s after the job")

    # the Request API's own sign-in token, for an administrator: the sync's state
    admin = session.sign_in_on_request("admin", stack.admin_password)
    status = session.request.get("/api/v1/sync/status", headers=bearer(admin["access_token"]))
    assert status.status_code == 200, status.text
    state = status.json()
    assert state["open_gaps"] == []
    assert state["files_quarantined"] == 0
    streams = {s["stream"]: s for s in state["streams"]}
    assert streams["changes"]["last_applied_seq"] >= job["result"]["seq"]


def test_a_killed_worker_loses_no_password_change(
    stack: Stack, session: Session, pytestconfig: pytest.Config
) -> None:
    """SIGKILL one of the two sync workers while passwords change, then change more: every
    change reaches the Request side (the other worker, the sweeper or arq's retry take the
    killed worker's work), and ``docker compose up`` brings the killed one back healthy."""
    users = {
        f"user{i}": session.create_user(f"user{i}", f"first pass phrase {i}") for i in range(8)
    }
    for user_id in users.values():
        session.wait_synced(user_id, 1, SYNC_DEADLINE_S)
    victim, survivor = stack.container_ids("worker")
    final: dict[str, str] = {}
    versions: dict[str, int] = {}

    def change(name: str, round_: int) -> None:
        # (a password may not contain the username)
        final[name] = f"pass phrase {round_} {secrets.token_hex(6)}"
        versions[name] = session.reset_password(users[name], final[name])["version"]

    # a burst with the kill in its middle, then a round on the surviving worker alone
    with ThreadPoolExecutor(max_workers=4) as pool:
        burst = [pool.submit(change, name, 1) for name in users]
        burst[2].result()
        killed = run(["docker", "kill", victim])
        assert killed.returncode == 0, killed.stderr
        for future in burst:
            future.result()
    state = run(["docker", "inspect", "--format", "{{.State.Status}}", victim]).stdout.strip()
    assert state == "exited", state
    killed_at = time.monotonic()
    for name in users:
        change(name, 2)
    lags = [session.wait_synced(users[name], versions[name], RECOVERY_DEADLINE_S) for name in users]
    for name, password in final.items():
        signed_in = session.sign_in_on_request(name, password)
        assert signed_in["authenticated"] is True, (name, signed_in)
    say(
        pytestconfig,
        f"{2 * len(users)} changes around a killed worker, all on the Request side "
        f"{time.monotonic() - killed_at:.1f} s after the kill (slowest {max(lags):.2f} s)",
    )

    # compose starts the killed container again; everything is healthy, and it syncs
    stack.compose("up", "--detach", "--wait", "--no-build", "--pull", "never", timeout=600)
    assert set(stack.container_ids("worker")) == {victim, survivor}
    assert_all_healthy(stack)
    after = session.reset_password(users["user0"], "one more pass phrase after the restart")
    session.wait_synced(users["user0"], after["version"], SYNC_DEADLINE_S)
    signed_in = session.sign_in_on_request("user0", "one more pass phrase after the restart")
    assert signed_in["authenticated"] is True
