"""Users brought in from the previous deployment: ``POST /api/v1/users/import`` and
``netsync users import``, against real servers.

The old system's accounts carry bcrypt hashes (``$2b$``); they are imported as they are, reach the
Request Network through the outbox like any change, and sign in there with their old passwords.
A bad row is reported by its line and the others are imported; a re-run changes nothing; an
import killed half-way is finished by running it again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import EmailStr, TypeAdapter, ValidationError

from app.users.import_rows import import_email
from tests.commands import BIN
from tests.factories import HASHES, PASSWORDS, admin_headers, create_user, import_users, legacy_rows
from tests.processes import ADMIN_PASSWORD, Process, start_system, token
from tests.queries import fetch
from tests.support import Sandbox, eventually


@pytest.mark.slow
async def test_ten_thousand_users_with_bcrypt_hashes_sign_in_on_the_request_side(
    sandbox: Sandbox, procs: list[Process]
) -> None:
    base, req = await start_system(sandbox, procs)
    async with httpx.AsyncClient(base_url=base) as api:
        headers = {"Authorization": f"Bearer {await token(api, base, 'admin', ADMIN_PASSWORD)}"}
        started = time.monotonic()
        answer = await import_users(api, headers, legacy_rows(10_000))
        assert answer.status_code == 200, answer.text
        summary = answer.json()
        assert (summary["created"], summary["failed"], summary["lines"]) == (10_000, 0, 10_000)

        async def all_there() -> bool:
            rows = await fetch(
                sandbox.services.request_url,
                "SELECT count(*) AS n FROM synced_users WHERE username LIKE 'old%'",
            )
            return int(rows[0]["n"]) == 10_000

        await eventually(all_there, timeout=60)
        print(f"\n10,000 users imported and applied in {time.monotonic() - started:.1f} s")
        for i in (0, 4_321, 9_999):
            login = await api.post(
                f"{req}/api/v1/auth/login",
                json={"username": f"old{i:05d}", "password": PASSWORDS[i % len(PASSWORDS)]},
            )
            assert login.status_code == 200, login.text
        wrong = await api.post(
            f"{req}/api/v1/auth/login", json={"username": "old00001", "password": PASSWORDS[0]}
        )
        assert wrong.status_code == 401
        # the stored hash is the old one, untouched until its owner signs in here
        stored = await fetch(
            sandbox.services.response_url,
            "SELECT password_hash FROM users WHERE username = 'old00002'",
        )
        assert stored[0]["password_hash"] == HASHES[2]


async def test_a_bad_row_is_reported_by_its_line_and_the_others_are_imported(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    headers = await admin_headers(api, sandbox.response_settings())
    body = b"\n".join(
        [
            b'{"username": "ann", "password_hash": "' + HASHES[0].encode() + b'"}',
            b"{not json",
            b'{"username": "bob"}',
            b'{"username": "cid", "password_hash": "$1$md5crypt$notsupported"}',
            b'{"username": "dee", "password": "short"}',
            b"",
            b'{"username": "eve", "password": "a long enough pass phrase of hers"}',
            b'{"username": "x!", "password_hash": "' + HASHES[1].encode() + b'"}',
            b'{"username": "fay", "password_hash": "' + HASHES[1].encode() + b'", "admin": 1}',
        ]
    )
    answer = await import_users(api, headers, body)
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert (summary["created"], summary["failed"]) == (2, 6), summary["errors"]
    assert [e["line"] for e in summary["errors"]] == [2, 3, 4, 5, 8, 9]
    reasons = " | ".join(e["error"] for e in summary["errors"])
    assert "not a JSON object" in reasons
    assert "exactly one of password and password_hash" in reasons
    assert "not a bcrypt" in reasons
    assert "short" not in reasons  # a refused password is never echoed
    names = await fetch(
        sandbox.services.response_url, "SELECT username FROM users ORDER BY username"
    )
    assert [r["username"] for r in names] == ["admin", "ann", "eve"]
    # the imported hash signs in; the plain password was hashed with argon2id
    login = await api.post("/api/v1/auth/token", data={"username": "ann", "password": PASSWORDS[0]})
    assert login.status_code == 200
    eve = await fetch(
        sandbox.services.response_url, "SELECT password_hash FROM users WHERE username = 'eve'"
    )
    assert eve[0]["password_hash"].startswith("$argon2id$")

    refused = await import_users(
        api, headers, legacy_rows(5, prefix="atomic") + b"{oops\n", atomic="true"
    )
    assert refused.status_code == 422
    assert refused.json()["error"] == "import_refused"
    assert "line 6" in refused.json()["detail"]
    kept = await fetch(
        sandbox.services.response_url,
        "SELECT count(*) AS n FROM users WHERE username LIKE 'atomic%'",
    )
    assert kept[0]["n"] == 0


async def test_a_rerun_never_undoes_what_changed_since_and_update_is_asked_for(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    headers = await admin_headers(api, sandbox.response_settings())
    body = legacy_rows(300)
    first = (await import_users(api, headers, body)).json()
    assert (first["created"], first["updated"], first["unchanged"]) == (300, 0, 0)
    # since the first run: one user changed their password, one account was deactivated
    users = await fetch(
        sandbox.services.response_url,
        "SELECT id::text, username FROM users WHERE username IN ('old00003', 'old00004')",
    )
    ids = {r["username"]: r["id"] for r in users}
    changed = await api.post(
        f"/api/v1/users/{ids['old00003']}/reset-password",
        json={"new_password": "a newer pass phrase of three"},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    off = await api.post(f"/api/v1/users/{ids['old00004']}/deactivate", headers=headers)
    assert off.status_code == 200, off.text
    outbox = "SELECT count(*) AS n FROM outbox_events WHERE entity = 'user'"
    before = (await fetch(sandbox.services.response_url, outbox))[0]["n"]
    again = (await import_users(api, headers, body.replace(b"old00007@", b"seven@"))).json()
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 300)
    assert (await fetch(sandbox.services.response_url, outbox))[0]["n"] == before
    kept = await fetch(
        sandbox.services.response_url,
        "SELECT username, email, password_hash, is_active FROM users"
        " WHERE username IN ('old00003', 'old00004', 'old00007') ORDER BY username",
    )
    assert kept[0]["password_hash"].startswith("$argon2id$")  # the new password stays
    assert kept[1]["is_active"] is False  # and so does the deactivation
    assert kept[2]["email"] == "old00007@example.org"  # nothing changes without update
    updated = await import_users(api, headers, body.replace(b"old00007@", b"seven@"), update="true")
    # update: the one that differs from the file in what it gives takes its values (the email
    # of old00007); old00003's new password stays (hashes are replaced only when asked), and
    # old00004's file row says nothing of is_active, so its deactivation stays
    assert (updated.json()["updated"], updated.json()["unchanged"]) == (1, 299)
    now = await fetch(
        sandbox.services.response_url,
        "SELECT username, password_hash, is_active FROM users"
        " WHERE username IN ('old00003', 'old00004') ORDER BY username",
    )
    assert now[0]["password_hash"].startswith("$argon2id$")
    assert now[1]["is_active"] is False
    replaced = await import_users(api, headers, body, update="true", replace_hashes="true")
    # and asked to, the file's hashes go back over the stored ones: old00003's old password
    # again, and old00007's old email (the file is the authority)
    assert (replaced.json()["updated"], replaced.json()["unchanged"]) == (2, 298)
    back = await fetch(
        sandbox.services.response_url,
        "SELECT password_hash FROM users WHERE username = 'old00003'",
    )
    assert back[0]["password_hash"] == HASHES[3]
    row = await fetch(
        sandbox.services.response_url,
        "SELECT email, version FROM users WHERE username = 'old00007'",
    )
    assert (row[0]["email"], row[0]["version"]) == ("old00007@example.org", 3)
    count = await fetch(sandbox.services.response_url, "SELECT count(*) AS n FROM users")
    assert count[0]["n"] == 301  # and the administrator
    assert (await api.post("/api/v1/users/import", content=body)).status_code == 401


async def test_hashes_whose_cost_would_stall_sign_in_are_refused_at_import_and_at_sign_in(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    headers = await admin_headers(api, sandbox.response_settings())
    costly = [
        HASHES[0].replace("$2b$04$", "$2b$31$"),  # days per check
        "$argon2id$v=19$m=8388608,t=3,p=1$c29tZXNhbHRzb21lc2FsdA$"  # 8 GiB per check
        "RdescudvJCsgt3ub+b+dWRWJTmaaJObG0RdescudvJCs",
        "$argon2id$v=19$m=65536,t=4000,p=1$c29tZXNhbHRzb21lc2FsdA$"  # hours per check
        "RdescudvJCsgt3ub+b+dWRWJTmaaJObG0RdescudvJCs",
        "$argon2id$v=19$m=65536,t=3,p=1$" + "A" * 600 + "$" + "B" * 43,  # past varchar(512)
        # digits of another script read by int() but not by argon2 (a 500 at sign-in)
        "$argon2id$v=19$m=\u0666\u0665\u0665\u0663\u0666,t=3,p=1$c29tZXNhbHRzb21lc2FsdA$"
        "RdescudvJCsgt3ub+b+dWRWJTmaaJObG0RdescudvJCs",
        HASHES[0] + "\n",  # stored, it could never verify
        # costlier than the refusal floor covers: a wrong password would answer later for
        # these accounts than for any other, and tell them apart
        HASHES[0].replace("$2b$04$", "$2b$13$"),
        "$argon2id$v=19$m=65536,t=4,p=1$c29tZXNhbHRzb21lc2FsdA$"
        "RdescudvJCsgt3ub+b+dWRWJTmaaJObG0RdescudvJCs",
    ]
    body = b"".join(
        orjson.dumps({"username": f"costly{i}", "password_hash": h}) + b"\n"
        for i, h in enumerate(costly)
    )
    summary = (await import_users(api, headers, body)).json()
    assert (summary["created"], summary["failed"]) == (0, len(costly))
    assert all("cost 4 to 12" in e["error"] for e in summary["errors"])
    # one that got into a database by another way is refused without being run
    user = await create_user(api, headers, "stored", "a long pass phrase for it")
    await fetch(
        sandbox.services.response_url,
        "UPDATE users SET password_hash = $1 WHERE id = $2::uuid",
        costly[0],
        user["id"],
    )
    started = time.perf_counter()
    refused = await api.post(
        "/api/v1/auth/token", data={"username": "stored", "password": "a long pass phrase for it"}
    )
    assert refused.status_code == 401
    assert time.perf_counter() - started < 10


async def test_an_import_leaves_the_importing_administrator_alone(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    headers = await admin_headers(api, sandbox.response_settings())
    row = {"username": "ADMIN", "password_hash": HASHES[0], "role": "user", "is_active": False}
    summary = (await import_users(api, headers, orjson.dumps(row) + b"\n", update="true")).json()
    assert summary["failed"] == 1
    assert summary["errors"][0] == {
        "line": 1,
        "error": "an import does not change your own account",
    }
    me = await api.get("/api/v1/users/me", headers=headers)
    assert (me.status_code, me.json()["role"]) == (200, "admin")


async def test_csv_from_a_spreadsheet_with_a_byte_order_mark_imports(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    headers = await admin_headers(api, sandbox.response_settings())
    body = (
        "\ufeffusername,email,password_hash,is_active\r\n"
        f"carla,carla@example.org,{HASHES[3]},true\r\n"
        f"dora,,{HASHES[4]},false\r\n"
        "al\rice,x\r\n"
        f'erin,"erin@example.org,{HASHES[5]},true\r\n'  # an unterminated quote
    ).encode()
    answer = await api.post(
        "/api/v1/users/import", content=body, headers={**headers, "Content-Type": "text/csv"}
    )
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert (summary["created"], summary["failed"]) == (2, 2), summary
    rows = await fetch(
        sandbox.services.response_url,
        "SELECT username, email, is_active FROM users WHERE username IN ('carla', 'dora')"
        " ORDER BY username",
    )
    assert [tuple(r) for r in rows] == [
        ("carla", "carla@example.org", True),
        ("dora", None, False),
    ]


async def test_an_import_killed_half_way_is_finished_by_running_it_again(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    total = 30_000
    source = tmp_path / "users.ndjson"
    source.write_bytes(legacy_rows(total))
    command = [str(BIN / "netsync")]
    env = sandbox.env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    users = "SELECT count(*) AS n FROM users WHERE username LIKE 'old%'"
    proc = await asyncio.create_subprocess_exec(
        *command,
        "users",
        "import",
        str(source),
        "--json",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while (n := (await fetch(sandbox.services.response_url, users))[0]["n"]) == 0:
            assert proc.returncode is None, "the import ended before it could be killed"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        await proc.wait()
    kept = (await fetch(sandbox.services.response_url, users))[0]["n"]
    assert 0 < n <= kept < total  # some batches committed, not all
    rerun = await asyncio.create_subprocess_exec(
        *command,
        "users",
        "import",
        str(source),
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(rerun.communicate(), 120)
    assert rerun.returncode == 0, stderr.decode()
    summary = orjson.loads(stdout)
    assert summary["created"] == total - kept
    assert summary["unchanged"] == kept
    assert (await fetch(sandbox.services.response_url, users))[0]["n"] == total
    twice = await fetch(
        sandbox.services.response_url,
        "SELECT count(*) AS n FROM (SELECT entity_id FROM outbox_events WHERE entity = 'user'"
        " GROUP BY entity_id HAVING count(*) > 1) AS t",
    )
    assert twice[0]["n"] == 0  # no user was sent twice


@pytest.mark.parametrize(
    "email",
    [
        "a@example.org",
        "A.B+c@Example.ORG",
        "a..b@example.org",
        ".a@example.org",
        "a@localhost",
        "a@example.invalid",
        "ü@example.org",
        "a@bücher.de",
        "John <john@example.org>",
        '"quoted"@example.org',
        "a@-bad.com",
        "a" * 64 + "@example.org",
        "a" * 65 + "@example.org",
        "a@" + "b" * 250 + ".com",
        "a@example",
        "a@[1.2.3.4]",
        "a @example.org",
        " a@example.org",
    ],
)
def test_the_import_judges_an_email_exactly_as_the_api_does(email: str) -> None:
    """The import's fast path for addresses must give the API's verdict and normal form."""
    api = TypeAdapter(EmailStr)

    def verdict(check: Callable[[str], str]) -> str:
        try:
            return check(email)
        except ValidationError:
            return "refused"

    assert verdict(import_email) == verdict(api.validate_python)
