"""Atomic users imports (``?atomic=true``, ``netsync users import --atomic``): one transaction,
nothing kept if a row is bad, and rows read twice so that plain passwords are hashed before the
transaction opens. Against real servers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from app.db import make_sessionmaker, session_scope
from app.imports.run import BATCH, import_stream
from app.users.bulk import users_bulk
from netsync.db import make_engine
from netsync.passwords import hash_password
from tests.commands import BIN
from tests.factories import admin_headers, import_users, legacy_rows
from tests.queries import fetch
from tests.support import Sandbox


async def test_an_atomic_import_hashes_its_plain_passwords_before_its_transaction_opens(
    api: httpx.AsyncClient, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An atomic import is one transaction, and a password takes tens of milliseconds to hash:
    hashed inside it, 2,000 plain passwords would hold every row it wrote (and, updating,
    locked) for a minute. Every hash is computed before the transaction writes anything."""
    headers = await admin_headers(api, sandbox.response_settings())
    writing_while_hashing: list[int] = []

    async def witnessed(password: str) -> str:
        rows = await fetch(
            sandbox.services.response_url,
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND backend_xid IS NOT NULL",
        )
        writing_while_hashing.append(rows[0]["n"])
        return await hash_password(password)

    monkeypatch.setattr("app.users.bulk.hash_password", witnessed)
    plain = b"".join(
        orjson.dumps({"username": f"new{i}", "password": f"a long enough pass phrase {i}"}) + b"\n"
        for i in range(3)
    )
    body = legacy_rows(BATCH) + plain  # the plain passwords are the second batch's
    answer = await import_users(api, headers, body, atomic="true")
    assert answer.status_code == 200, answer.text
    assert answer.json()["created"] == BATCH + 3
    assert writing_while_hashing == [0, 0, 0]
    login = await api.post(
        "/api/v1/auth/token", data={"username": "new2", "password": "a long enough pass phrase 2"}
    )
    assert login.status_code == 200, login.text


async def test_a_file_changed_between_an_atomic_imports_readings_gives_no_row_anothers_hash(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    """A file read twice may hold other rows the second time (edited, sorted, regenerated
    while the first reading hashed): a hash kept between the readings goes only to the row it
    was made from, and a row it was not made for is hashed from its own password."""
    await admin_headers(api, sandbox.response_settings())  # the schema and an administrator

    passwords = {"ann": "the first long enough pass phrase", "bob": "another long pass phrase"}

    def row(name: str) -> bytes:
        return orjson.dumps({"username": name, "password": passwords[name]}) + b"\n"

    readings = [row("ann") + row("bob"), row("bob") + row("ann")]

    async def body() -> AsyncIterator[bytes]:
        yield readings.pop(0)

    engine = make_engine(sandbox.response_settings().database_url, pool_size=1)
    try:
        summary = await import_stream(
            users_bulk(),
            lambda: session_scope(make_sessionmaker(engine)),
            body,
            "ndjson",
            atomic=True,
        )
    finally:
        await engine.dispose()
    assert summary.created == 2
    for name in ("ann", "bob"):
        login = await api.post(
            "/api/v1/auth/token", data={"username": name, "password": passwords[name]}
        )
        assert login.status_code == 200, (name, login.text)


async def test_the_command_imports_atomically_from_a_pipe_and_from_a_file(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """``--atomic`` reads its rows twice (plain passwords are hashed before its transaction):
    a pipe is held for the second reading, a file (or standard input redirected from one) is
    read again from where it started; a bad last row keeps nothing of either."""
    env = sandbox.env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")

    async def run(source: str, stdin: bytes | int | None) -> tuple[int, bytes, bytes]:
        """The command's exit code and output; ``stdin``: bytes through a pipe, or a file's
        descriptor (read from where it stands)."""
        given: int = asyncio.subprocess.DEVNULL
        if isinstance(stdin, bytes):
            given = asyncio.subprocess.PIPE
        elif stdin is not None:
            given = stdin
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "netsync"),
            "users",
            "import",
            source,
            "--atomic",
            "--json",
            env=env,
            stdin=given,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        sent = stdin if isinstance(stdin, bytes) else None
        stdout, stderr = await asyncio.wait_for(proc.communicate(sent), 120)
        assert proc.returncode is not None
        return proc.returncode, stdout, stderr

    def plain(prefix: str) -> bytes:
        row = {"username": f"{prefix}plain", "password": "a long enough pass phrase of theirs"}
        return orjson.dumps(row) + b"\n"

    piped = legacy_rows(5, prefix="piped") + plain("piped")
    code, stdout, stderr = await run("-", piped)
    assert code == 0, stderr.decode()
    assert orjson.loads(stdout)["created"] == 6
    source = tmp_path / "users.ndjson"
    source.write_bytes(legacy_rows(5, prefix="filed") + plain("filed"))
    code, stdout, stderr = await run(str(source), None)
    assert code == 0, stderr.decode()
    assert orjson.loads(stdout)["created"] == 6
    # standard input redirected from a file, its first line read already by the caller
    # (``{ read -r _; netsync users import - --atomic; } < users.ndjson``)
    skipped = b"{a line the caller read}\n"
    source.write_bytes(skipped + legacy_rows(5, prefix="redirected") + plain("redirected"))
    fd = os.open(source, os.O_RDONLY)
    try:
        os.lseek(fd, len(skipped), os.SEEK_SET)
        code, stdout, stderr = await run("-", fd)
    finally:
        os.close(fd)
    assert code == 0, stderr.decode()
    assert orjson.loads(stdout)["created"] == 6
    hashes = await fetch(
        sandbox.services.response_url,
        "SELECT password_hash FROM users"
        " WHERE username IN ('pipedplain', 'filedplain', 'redirectedplain')",
    )
    assert [r["password_hash"][:10] for r in hashes] == ["$argon2id$"] * 3
    refused = legacy_rows(5, prefix="refused") + plain("refused") + b"{oops\n"
    source.write_bytes(refused)
    for name, stdin in (("-", refused), (str(source), None)):
        code, _, stderr = await run(name, stdin)
        assert code == 2, stderr.decode()
        assert "line 7" in stderr.decode()
    kept = await fetch(
        sandbox.services.response_url,
        "SELECT count(*) AS n FROM users WHERE username LIKE 'refused%'",
    )
    assert kept[0]["n"] == 0
