"""Users imported in bulk, for sites moving off the previous deployment: its accounts keep their
passwords because their hashes come along.

A row carries an existing hash (bcrypt ``$2a$``/``$2b$``/``$2y$``, or argon2) or a plain password.
A hash is stored as it is, never recomputed: bcrypt at cost 12 takes a quarter of a second per
user, so 100,000 users would take hours of CPU, and the sign-in path already verifies both
formats and rehashes to argon2id at the next successful sign-in (``netsync.passwords``). A plain
password is checked against the password policy and hashed in the bounded hashing pool.

Rows are matched by username (case-insensitively, as the unique index has it) in batches, each
one statement over arrays plus one for the batch's outbox rows. By default only new usernames
are written and existing users are left exactly as they are, so a re-run of the same file (or of
one whose import was interrupted) finishes the job and never undoes what happened since: a
password changed, a hash converted at sign-in, an account deactivated or demoted. With
``update`` existing users take the row's email, role and active flag, and its ``password_hash``
when it has one (a plain password never replaces a stored hash: hashing it again would be a new
version and a signed-out user on every run); a row that changes nothing writes nothing. A stored
hash's cost is bounded (``netsync.passwords.acceptable_hash``): a hash is cheap to import and
its parameters decide what every later sign-in costs. The outbox rows carry ``sync_payload`` as
every other user change does, and leave in the relay's large files. A bad row is reported with
its line number and the others go on; with ``atomic`` one bad row stops the import and nothing
is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import text

from app.db import ResponseSession
from app.users.import_rows import Format, ImportedUser, RowError, rows
from app.users.service import ENTITY, check_password, sync_payload
from netsync.errors import InvalidInput
from netsync.logging import correlation_id
from netsync.passwords import hash_password

__all__ = ["Format", "ImportRefused", "ImportSummary", "Sessions", "import_users"]

#: Opens a unit that commits on exit and rolls back on an error (``app.db.session_scope``).
Sessions = Callable[[], AbstractAsyncContextManager[ResponseSession]]
#: Rows per transaction (and per pair of statements); a row is a few hundred bytes.
BATCH = 2000
#: An atomic import is one transaction holding every row it wrote: it stops at this many lines.
MAX_ATOMIC_ROWS = 100_000
#: Errors listed in a summary; the count covers the rest.
MAX_ERRORS_LISTED = 100


@dataclass
class ImportSummary:
    lines: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[RowError] = field(default_factory=list)

    def fail(self, line: int, error: str) -> None:
        self.failed += 1
        if len(self.errors) < MAX_ERRORS_LISTED:
            self.errors.append(RowError(line, error))

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "errors": [{"line": e.line, "error": e.error} for e in self.errors],
        }


class ImportRefused(InvalidInput):
    """An atomic import met a bad row: nothing was kept."""

    code = "import_refused"


#: A plain-password row of an existing user keeps the stored hash (hashing it again would be a
#: new salt, a new version and a signed-out user on every re-run).
KEEP_HASH = "!keep"

_INSERT = text(
    """
    INSERT INTO users AS u (id, username, email, password_hash, role, is_active, version)
    SELECT gen_random_uuid(), username, email, password_hash, role, is_active, 1 FROM unnest(
        CAST(:usernames AS text[]), CAST(:emails AS text[]), CAST(:hashes AS text[]),
        CAST(:roles AS text[]), CAST(:active AS boolean[])
    ) AS t(username, email, password_hash, role, is_active)
    ON CONFLICT (lower(username)) DO NOTHING
    RETURNING u.id, u.username, u.email, u.password_hash, u.role, u.is_active,
        u.profile_type_id, u.version
    """
)

_UPSERT = text(
    """
    WITH input AS (
        SELECT * FROM unnest(
            CAST(:usernames AS text[]), CAST(:emails AS text[]), CAST(:hashes AS text[]),
            CAST(:roles AS text[]), CAST(:active AS boolean[])
        ) AS t(username, email, password_hash, role, is_active)
    )
    INSERT INTO users AS u (id, username, email, password_hash, role, is_active, version)
    SELECT gen_random_uuid(), username, email, password_hash, role, is_active, 1 FROM input
    ON CONFLICT (lower(username)) DO UPDATE SET
        email = excluded.email,
        password_hash = CASE WHEN excluded.password_hash = :keep
            THEN u.password_hash ELSE excluded.password_hash END,
        role = excluded.role,
        is_active = excluded.is_active,
        version = u.version + 1,
        updated_at = now(),
        password_changed_at = CASE WHEN excluded.password_hash NOT IN (:keep, u.password_hash)
            THEN now() ELSE u.password_changed_at END,
        token_version = u.token_version
            + CASE WHEN excluded.password_hash NOT IN (:keep, u.password_hash) THEN 1 ELSE 0 END
    WHERE (u.email, u.role, u.is_active)
            IS DISTINCT FROM (excluded.email, excluded.role, excluded.is_active)
        OR excluded.password_hash NOT IN (:keep, u.password_hash)
    RETURNING u.id, u.username, u.email, u.password_hash, u.role, u.is_active,
        u.profile_type_id, u.version
    """
)

_OUTBOX = text(
    """
    INSERT INTO outbox_events (event_id, entity, entity_id, version, op, data, correlation_id)
    SELECT gen_random_uuid(), :entity, entity_id, version, 'upsert', data, :correlation_id
    FROM unnest(CAST(:ids AS uuid[]), CAST(:versions AS bigint[]), CAST(:data AS jsonb[]))
        AS t(entity_id, version, data)
    """
)


async def apply_batch(
    session: ResponseSession,
    batch: list[tuple[int, ImportedUser]],
    summary: ImportSummary,
    *,
    update: bool = False,
) -> None:
    """Write one batch and its outbox rows: new users only, or (``update``) existing ones too.

    A later row of one username wins within the batch; rows go to the database in username
    order, so two imports over the same users lock them in the same order and cannot deadlock.
    Plain passwords are hashed only for users that do not exist yet, one at a time, so an
    import never takes more than one slot of the hashing pool from sign-ins."""
    latest: dict[str, ImportedUser] = {}
    for _, user in batch:
        latest[user.username.lower()] = user
    existing = set(
        await session.scalars(
            text("SELECT lower(username) FROM users WHERE lower(username) = ANY(:names)"),
            {"names": list(latest)},
        )
    )
    users = [latest[name] for name in sorted(latest) if update or name not in existing]
    hashes = []
    for user in users:
        if user.password_hash is not None:
            hashes.append(user.password_hash)
        elif user.username.lower() in existing:
            hashes.append(KEEP_HASH)
        else:
            assert user.password is not None
            hashes.append(await hash_password(user.password))
    written: Sequence[Any] = []
    if users:
        params: dict[str, Any] = {
            "usernames": [u.username for u in users],
            "emails": [u.email for u in users],
            "hashes": hashes,
            "roles": [u.role for u in users],
            "active": [u.is_active for u in users],
        }
        if update:
            params["keep"] = KEEP_HASH
        result = await session.execute(_UPSERT if update else _INSERT, params)
        written = result.all()
    if written:
        await session.execute(
            _OUTBOX,
            {
                "entity": ENTITY,
                "correlation_id": correlation_id.get(),
                "ids": [r.id for r in written],
                "versions": [r.version for r in written],
                "data": [orjson.dumps(sync_payload(r)).decode() for r in written],
            },
        )
    created = len([r for r in written if r.version == 1])
    summary.created += created
    summary.updated += len(written) - created
    summary.unchanged += len(batch) - len(written)


def _policy(number: int, user: ImportedUser) -> RowError | None:
    if user.password is None:
        return None
    try:
        check_password(user.password, username=user.username)
    except InvalidInput as exc:
        return RowError(number, f"password: {exc.detail}")
    return None


async def import_users(
    sessions: Sessions,
    chunks: AsyncIterator[bytes],
    fmt: Format,
    *,
    atomic: bool = False,
    update: bool = False,
    protect: str | None = None,
    progress: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    """Import a stream of rows. ``sessions`` opens a committing unit (``async with sessions()
    as session``, committed on exit). Users that exist already are left as they are unless
    ``update``; the account named ``protect`` (the administrator importing) is never changed.

    Non-atomic imports commit every batch, so an interrupted import keeps what it did and a
    re-run finishes it; and while one batch is in the database the next is parsed (at most one
    of each), so parsing here and writing in PostgreSQL use both cores. An atomic import is one
    transaction, written batch after batch."""
    summary = ImportSummary()
    writing: asyncio.Task[None] | None = None

    async def write(batch: list[tuple[int, ImportedUser]], session: ResponseSession) -> None:
        await apply_batch(session, batch, summary, update=update)
        if progress is not None:
            progress(summary)

    async def write_alone(batch: list[tuple[int, ImportedUser]]) -> None:
        async with sessions() as session:
            await write(batch, session)

    async def batches() -> AsyncIterator[list[tuple[int, ImportedUser]]]:
        batch: list[tuple[int, ImportedUser]] = []
        async for number, parsed in rows(chunks, fmt):
            summary.lines = number
            if parsed is None:
                continue
            error = parsed if isinstance(parsed, RowError) else _policy(number, parsed)
            if error is None and protect and parsed.username.lower() == protect.lower():  # type: ignore[union-attr]
                error = RowError(number, "an import does not change your own account")
            if error is None and atomic and summary.lines > MAX_ATOMIC_ROWS:
                raise ImportRefused(
                    f"an atomic import holds one transaction: at most {MAX_ATOMIC_ROWS} rows;"
                    " import larger files without atomic (each batch commits; a re-run resumes)"
                )
            if error is not None:
                if atomic:
                    raise ImportRefused(f"line {error.line}: {error.error}; nothing was imported")
                summary.fail(error.line, error.error)
                continue
            assert isinstance(parsed, ImportedUser)
            batch.append((number, parsed))
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    if atomic:
        async with sessions() as session:
            async for batch in batches():
                await write(batch, session)
        return summary
    try:
        async for batch in batches():
            if writing is not None:
                await writing  # one batch in the database at a time, in order
            writing = asyncio.create_task(write_alone(batch))
        if writing is not None:
            await writing
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writing
    return summary
