"""Sign-in is guarded on both networks: throttled guessing (shared by every replica), bounded
hashing, rehashing at sign-in, revocation by a counter, and no secret in any log or error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import bcrypt
import httpx
import orjson
import pytest
from arq.connections import ArqRedis
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.queue import serialization
from app.queue.client import redis_pool
from netsync import passwords
from tests.factories import FAST, admin_headers, asgi_client, create_user, login
from tests.queries import fetch
from tests.scrape import scrape
from tests.support import Sandbox


@pytest.fixture
async def replicas(
    sandbox: Sandbox, no_refusal_floor: None
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two Response API replicas on one Redis, with a short account window."""
    settings = sandbox.response_settings(sign_in_account_limits=FAST)
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(asgi_client(create_app(settings)))
        b = await stack.enter_async_context(asgi_client(create_app(settings)))
        yield a, b


async def token(api: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await api.post("/api/v1/auth/token", data={"username": username, "password": password})


async def test_guessing_is_throttled_across_replicas_for_known_and_unknown_users_alike(
    sandbox: Sandbox, replicas: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, b = replicas
    admin = await admin_headers(a, sandbox.response_settings())
    await create_user(a, admin, "grace", "right pass phrase 1")
    answers = {}
    for name in ("grace", "nobody-at-all"):
        codes = [(await token(r, name, "wrong guess")).status_code for r in (a, b, a, b)]
        answers[name] = codes
        refused = await token(a, name, "right pass phrase 1")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "too_many_attempts"
        assert 1 <= int(refused.headers["Retry-After"]) <= 2
    # three attempts per window, counted on both replicas together; no enumeration
    assert answers == {"grace": [401, 401, 401, 429], "nobody-at-all": [401, 401, 401, 429]}
    metrics = await scrape(a)
    throttled = metrics.value(
        "netsync_sign_in_throttled_total", app="response-api", scope="account"
    )
    assert throttled >= 1

    await asyncio.sleep(2.1)  # the window passes: the honest user gets in
    assert (await token(b, "grace", "right pass phrase 1")).status_code == 200


async def test_an_admin_lifts_a_lock_and_a_right_password_resets_the_count(
    sandbox: Sandbox, replicas: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, b = replicas
    admin = await admin_headers(a, sandbox.response_settings())
    user = await create_user(a, admin, "heidi", "right pass phrase 2")
    for _ in range(2):
        assert (await token(a, "heidi", "wrong")).status_code == 401
    assert (await token(a, "heidi", "right pass phrase 2")).status_code == 200  # resets
    for _ in range(3):
        assert (await token(b, "heidi", "wrong")).status_code == 401
    assert (await token(b, "heidi", "right pass phrase 2")).status_code == 429
    lifted = await a.delete(f"/api/v1/users/{user['id']}/sign-in-lock", headers=admin)
    assert lifted.status_code == 204, lifted.text
    assert (await token(b, "heidi", "right pass phrase 2")).status_code == 200


async def test_the_current_password_check_is_throttled_too(
    sandbox: Sandbox, replicas: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, _ = replicas
    admin = await admin_headers(a, sandbox.response_settings())
    await create_user(a, admin, "ivan", "right pass phrase 3")
    mine = await login(a, "ivan", "right pass phrase 3")
    codes = []
    for _ in range(4):
        response = await a.post(
            "/api/v1/users/me/password",
            json={"current_password": "a guess", "new_password": "brand new phrase 4"},
            headers=mine,
        )
        codes.append(response.status_code)
    assert codes == [403, 403, 403, 429]


async def test_a_flood_gets_a_typed_503_once_every_hashing_slot_stays_busy(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passwords, "WAIT_S", 0.01)
    monkeypatch.setitem(passwords._slots, asyncio.get_running_loop(), asyncio.Semaphore(1))
    flood = await asyncio.gather(*(token(api, f"user{i}", "wrong") for i in range(12)))
    codes = sorted(r.status_code for r in flood)
    assert 401 in codes
    assert 503 in codes
    busy = next(r for r in flood if r.status_code == 503)
    assert busy.json()["error"] == "busy"
    assert busy.headers["Retry-After"] == "1"


def test_the_hashing_pool_follows_the_cgroup_cpu_quota(tmp_path: Path) -> None:
    affinity = len(__import__("os").sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert passwords.cpu_quota(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert passwords.cpu_quota(tmp_path) == affinity
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert passwords.cpu_quota(tmp_path) == 1
    assert passwords.MEMORY_KIB >= 19 * 1024
    assert passwords.TIME_COST >= 2


async def test_a_legacy_bcrypt_hash_is_rehashed_at_sign_in_and_the_new_hash_syncs(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    user = await create_user(api, admin, "karl", "legacy pass phrase 5")
    legacy = bcrypt.hashpw(b"legacy pass phrase 5", bcrypt.gensalt(4)).decode()
    url = sandbox.services.response_url
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(
            "UPDATE users SET password_hash = $1 WHERE id = $2", legacy, uuid.UUID(user["id"])
        )
    finally:
        await conn.close()
    assert (await token(api, "karl", "legacy pass phrase 5")).status_code == 200
    rows = await fetch(url, "SELECT password_hash, version FROM users WHERE username = 'karl'")
    assert rows[0]["password_hash"].startswith("$argon2id$")
    assert rows[0]["version"] == user["version"] + 1
    events = await fetch(
        url,
        "SELECT data FROM outbox_events WHERE entity_id = $1 ORDER BY id DESC LIMIT 1",
        uuid.UUID(user["id"]),
    )
    data = events[0]["data"]
    data = orjson.loads(data) if isinstance(data, str) else data
    assert data["password_hash"] == rows[0]["password_hash"]
    # the same password still works, and is not rehashed again
    assert (await token(api, "karl", "legacy pass phrase 5")).status_code == 200
    again = await fetch(url, "SELECT version FROM users WHERE username = 'karl'")
    assert again[0]["version"] == rows[0]["version"]


async def test_a_refused_sign_in_takes_as_long_whatever_hash_the_account_has(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    """A wrong password for an unconverted bcrypt account (cost 12, as the previous deployment
    made them) must not stand out from one for an argon2id account or an unknown name: every
    refusal waits at least the floor, which is at least a bcrypt check."""
    admin = await admin_headers(api, sandbox.response_settings())
    await create_user(api, admin, "nico", "modern pass phrase 8")
    await create_user(api, admin, "olga", "legacy pass phrase 9")
    legacy = await asyncio.to_thread(
        lambda: bcrypt.hashpw(b"legacy pass phrase 9", bcrypt.gensalt(12)).decode()
    )
    await fetch(
        sandbox.services.response_url,
        "UPDATE users SET password_hash = $1 WHERE username = 'olga'",
        legacy,
    )
    floor = passwords.refusal_floor_s()
    assert floor is not None
    started = time.perf_counter()
    await asyncio.to_thread(bcrypt.checkpw, b"wrong", legacy.encode())
    assert floor >= (time.perf_counter() - started) * 0.5  # the floor covers a bcrypt check
    for name in ("nico", "olga", "nobody-here"):
        started = time.perf_counter()
        assert (await token(api, name, "a wrong pass phrase")).status_code == 401
        assert time.perf_counter() - started >= floor, name
    # a right password for a deactivated account is refused as slowly: timing confirms nothing
    nico = await fetch(
        sandbox.services.response_url, "SELECT id FROM users WHERE username = 'nico'"
    )
    off = await api.post(f"/api/v1/users/{nico[0]['id']}/deactivate", headers=admin)
    assert off.status_code == 200, off.text
    started = time.perf_counter()
    assert (await token(api, "nico", "modern pass phrase 8")).status_code == 401
    assert time.perf_counter() - started >= floor


async def test_a_costlier_accepted_hash_raises_the_floor_with_it() -> None:
    """An operator who accepts bcrypt cost 13 (``NETSYNC_BCRYPT_MAX_COST``) gets a floor that
    covers a cost-13 check, so such an account does not stand out either; cost 14 stays
    refused unrun."""
    code = (
        "import asyncio, json; from netsync import passwords as p; asyncio.run(p.warm_up());"
        "print(json.dumps([p.refusal_floor_s(), p.acceptable_hash(%r), p.acceptable_hash(%r)]))"
    )
    costly = await asyncio.to_thread(
        lambda: bcrypt.hashpw(b"a wrong guess", bcrypt.gensalt(13)).decode()
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code % (costly, costly.replace("$13$", "$14$")),
        env={**os.environ, "NETSYNC_BCRYPT_MAX_COST": "13", "NETSYNC_SIGN_IN_FLOOR_MS": ""},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    floor, thirteen, fourteen = orjson.loads(out)
    assert (thirteen, fourteen) == (True, False)
    started = time.perf_counter()
    await asyncio.to_thread(bcrypt.checkpw, b"wrong", costly.encode())
    assert floor * passwords.FLOOR_MARGIN >= (time.perf_counter() - started) * 0.8
    assert not passwords.acceptable_hash(costly)  # this process keeps the default, 12


async def test_a_password_change_revokes_tokens_by_counter_whatever_the_clocks_say(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    user = await create_user(api, admin, "lena", "first pass phrase 6")
    old = await login(api, "lena", "first pass phrase 6")
    reset = await api.post(
        f"/api/v1/users/{user['id']}/reset-password",
        json={"new_password": "second pass phrase 7"},
        headers=admin,
    )
    assert reset.status_code == 200, reset.text
    # a replica whose clock ran ahead wrote the change "in the past": a clock comparison would
    # let the old token through; the counter does not
    conn = await asyncpg.connect(sandbox.services.response_url)
    try:
        await conn.execute(
            "UPDATE users SET password_changed_at = now() - interval '1 day' WHERE id = $1",
            uuid.UUID(user["id"]),
        )
    finally:
        await conn.close()
    assert (await api.get("/api/v1/users/me", headers=old)).status_code == 401
    new = await login(api, "lena", "second pass phrase 7")
    assert (await api.get("/api/v1/users/me", headers=new)).status_code == 200


async def test_a_database_error_during_a_password_change_shows_no_hash_and_no_password(
    sandbox: Sandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    # the API's own log handlers write JSON lines to the process's output: read all of it
    async with contextlib.AsyncExitStack() as stack:
        manager = await stack.enter_async_context(
            LifespanManager(create_app(sandbox.response_settings()))
        )
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        api = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://api")
        )
        await _password_change_fails_quietly(api, sandbox, capfd)


async def _password_change_fails_quietly(
    api: httpx.AsyncClient, sandbox: Sandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    admin = await admin_headers(api, sandbox.response_settings())
    user = await create_user(api, admin, "mona", "first pass phrase 8")
    conn = await asyncpg.connect(sandbox.services.response_url)
    try:
        await conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
        logging.getLogger().setLevel(logging.DEBUG)
        response = await api.post(
            f"/api/v1/users/{user['id']}/reset-password",
            json={"new_password": "secret pass phrase 9"},
            headers=admin,
        )
    finally:
        await conn.execute("DROP TRIGGER IF EXISTS refuse ON users")
        await conn.execute("DROP FUNCTION IF EXISTS refuse()")
        await conn.close()
    assert response.status_code == 500
    out, err = capfd.readouterr()
    seen = out + err + response.text
    assert "refused by the test" in seen  # the error itself is logged
    assert "secret pass phrase 9" not in seen
    assert "$argon2id$" not in seen


async def test_jobs_travel_as_json_and_a_pickled_job_planted_in_redis_runs_nothing(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    redis: ArqRedis = redis_pool(sandbox.services.redis_url, queue_name=sandbox.queue)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))

    # job ids are global in arq (not per queue) and a finished job leaves a result for an
    # hour: a fixed id would make the next run on the same Redis find it taken
    checked, planted = f"json-check-{uuid.uuid4()}", f"planted-{uuid.uuid4()}"
    try:
        job = await redis.enqueue_job("sync_changes", str(uuid.uuid4()), _job_id=checked)
        assert job is not None
        raw = await redis.get(f"arq:job:{checked}")
        assert orjson.loads(raw)["a"]  # JSON, readable by anyone, executable by no one
        await redis.delete(f"arq:job:{checked}")
        await redis.set(f"arq:job:{planted}", pickle.dumps({"f": Exploit(), "a": [], "k": {}}))
        await redis.zadd(sandbox.queue, {planted: time.time() * 1000})
        from arq.worker import Worker

        from jobs.worker import worker_redis

        async def sync_changes(ctx: dict[str, object]) -> None:
            return None

        w = Worker(
            functions=[sync_changes],
            queue_name=sandbox.queue,
            redis_pool=worker_redis(sandbox.services.redis_url, queue_name=sandbox.queue),
            burst=True,
            poll_delay=0.01,
            handle_signals=False,
            **serialization.OPTIONS,
        )
        try:
            await asyncio.wait_for(w.async_run(), 20)
        finally:
            await w.close()
        assert not marker.exists()
    finally:
        await redis.delete(
            sandbox.queue,
            f"arq:job:{planted}",
            f"arq:result:{checked}",
            f"arq:result:{planted}",
        )
        await redis.aclose(close_connection_pool=True)


def test_a_row_quoted_in_a_database_error_detail_never_reaches_a_log_line() -> None:
    # hide_parameters hides a statement's values; PostgreSQL's DETAIL can still quote the row
    from netsync.logging import ConsoleFormatter, JsonFormatter

    detail = (
        "DETAIL:  Failing row contains (7, bob, $argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA, x)."
    )
    try:
        raise RuntimeError(f'new row violates check constraint "ck_users_role"\n{detail}')
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    for formatter in (JsonFormatter("test"), ConsoleFormatter()):
        line = formatter.format(record)
        assert "ck_users_role" in line
        assert "$argon2id$" not in line
    assert "$argon2id$" not in serialization.serialize({"r": RuntimeError(detail)}).decode()
