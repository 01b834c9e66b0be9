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
``update`` existing users take the email, role and active flag the row gives (a field it
leaves out keeps its stored value; ``"email": null`` clears it); the stored hash stays unless
``replace_hashes`` is asked for as well (then the row's ``password_hash`` replaces it; a plain
password never does: hashing it again would be a new version and a signed-out user on every
run); a row that changes nothing writes nothing. A row's
``profile_type`` names one that exists (so profile types are imported first); a row without
one leaves the user's profile type as it is. A stored
hash's cost is bounded (``netsync.passwords.acceptable_hash``): a hash is cheap to import and
its parameters decide what every later sign-in costs. The outbox rows carry the payload
(``exchange.entities.USER.payload``) every other user change does, and leave in the relay's
large files. A bad row is reported with
its line number and the others go on; with ``atomic`` one bad row stops the import and nothing
is kept (``app.imports.run``, the driver every bulk import shares).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from app.db import ResponseSession
from app.imports.rows import RowError
from app.imports.run import Bulk, ImportSummary, Sessions, given, latest_by, upsert_recorded
from app.users.import_rows import ImportedUser, csv_fields
from app.users.service import check_password
from exchange.entities import USER
from netsync.errors import InvalidInput
from netsync.passwords import hash_password

#: A plain-password row of an existing user keeps the stored hash (hashing it again would be a
#: new salt, a new version and a signed-out user on every re-run).
KEEP_HASH = "!keep"

_INSERT = text(
    """
    INSERT INTO users AS u
        (id, username, email, password_hash, role, is_active, profile_type_id, version)
    SELECT gen_random_uuid(), username, email, password_hash, role, is_active, profile_type_id, 1
    FROM unnest(
        CAST(:usernames AS text[]), CAST(:emails AS text[]), CAST(:hashes AS text[]),
        CAST(:roles AS text[]), CAST(:active AS boolean[]), CAST(:profile_types AS uuid[])
    ) AS t(username, email, password_hash, role, is_active, profile_type_id)
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
            CAST(:roles AS text[]), CAST(:active AS boolean[]), CAST(:profile_types AS uuid[])
        ) AS t(username, email, password_hash, role, is_active, profile_type_id)
    )
    INSERT INTO users AS u
        (id, username, email, password_hash, role, is_active, profile_type_id, version)
    SELECT gen_random_uuid(), username, email, password_hash, role, is_active, profile_type_id, 1
    FROM input
    ON CONFLICT (lower(username)) DO UPDATE SET
        email = excluded.email,
        password_hash = CASE WHEN excluded.password_hash = :keep
            THEN u.password_hash ELSE excluded.password_hash END,
        role = excluded.role,
        is_active = excluded.is_active,
        profile_type_id = coalesce(excluded.profile_type_id, u.profile_type_id),
        version = u.version + 1,
        updated_at = now(),
        password_changed_at = CASE WHEN excluded.password_hash NOT IN (:keep, u.password_hash)
            THEN now() ELSE u.password_changed_at END,
        token_version = u.token_version
            + CASE WHEN excluded.password_hash NOT IN (:keep, u.password_hash) THEN 1 ELSE 0 END
    WHERE (u.email, u.role, u.is_active)
            IS DISTINCT FROM (excluded.email, excluded.role, excluded.is_active)
        OR excluded.password_hash NOT IN (:keep, u.password_hash)
        OR (excluded.profile_type_id IS NOT NULL
            AND excluded.profile_type_id IS DISTINCT FROM u.profile_type_id)
    RETURNING u.id, u.username, u.email, u.password_hash, u.role, u.is_active,
        u.profile_type_id, u.version
    """
)


_STORED = text(
    "SELECT lower(username) AS name, email, role, is_active FROM users"
    " WHERE lower(username) = ANY(:names) ORDER BY lower(username)"
)
_LOCK_STORED = text(str(_STORED) + " FOR UPDATE")


async def hash_new(sessions: Sessions, batch: list[tuple[int, ImportedUser]]) -> None:
    """Hash the plain passwords of users that do not exist yet, before the batch's transaction
    opens (a hash takes tens of milliseconds: 2,000 of them must not hold a transaction, nor
    the rows an update locks). One at a time, so an import never takes more than one slot of
    the hashing pool from sign-ins; users that exist keep their hash and cost nothing."""
    plain = [u for _, u in batch if u.password is not None]
    if not plain:
        return
    async with sessions() as session:
        existing = set(
            await session.scalars(
                text("SELECT lower(username) FROM users WHERE lower(username) = ANY(:names)"),
                {"names": [u.username.lower() for u in plain]},
            )
        )
    for user in plain:
        if user.username.lower() not in existing:
            assert user.password is not None
            user._hashed = await hash_password(user.password)


async def write_batch(
    session: ResponseSession,
    batch: list[tuple[int, ImportedUser]],
    summary: ImportSummary,
    update: bool,
    *,
    replace_hashes: bool = False,
) -> list[RowError]:
    """Write one batch and its outbox rows: new users only, or (``update``) existing ones too.

    A row naming a profile type that does not exist is refused; the ones named are locked
    (``FOR KEY SHARE``) until the batch commits, so none is deleted in between. An existing
    user's hash is replaced by the row's ``password_hash`` only with ``replace_hashes``: since
    the first import its owner may have changed the password, or signed in and been rehashed,
    and an update run would otherwise put the old hash back and sign them out."""
    latest = latest_by(batch, lambda u: u.username.lower())
    # with update the existing rows are locked (in username order, as the upsert goes) and
    # read, so a field a row does not give keeps its stored value
    stored = {
        r.name: r
        for r in await session.execute(
            _LOCK_STORED if update else _STORED,
            {"names": [u.username.lower() for _, u in latest]},
        )
    }
    existing = set(stored)
    named = {u.profile_type for _, u in latest if u.profile_type}
    profile_types: dict[str, Any] = {}  # as the rows spell them → id
    if named:
        # matched by PostgreSQL's lower(), as the unique index has it (Python's differs)
        found = await session.execute(
            text(
                "SELECT n.name, p.id FROM unnest(CAST(:names AS text[])) AS n(name)"
                " JOIN profile_types p ON lower(p.name) = lower(n.name)"
                " ORDER BY p.id FOR KEY SHARE OF p"
            ),
            {"names": sorted(named)},
        )
        profile_types = dict(found.all())
    refused = [
        RowError(line, "profile_type: no profile type of that name")
        for line, u in latest
        if u.profile_type and u.profile_type not in profile_types
    ]
    users = [
        u
        for _, u in latest
        if (update or u.username.lower() not in existing)
        and (not u.profile_type or u.profile_type in profile_types)
    ]
    hashes = []
    for user in users:
        if user.username.lower() in existing:
            replace = replace_hashes and user.password_hash is not None
            hashes.append(user.password_hash if replace else KEEP_HASH)
        elif user.password_hash is not None:
            hashes.append(user.password_hash)
        else:  # it existed when hash_new looked (gone since), or its row changed in between
            assert user.password is not None
            hashes.append(user._hashed or await hash_password(user.password))
    versions: list[int] = []
    if users:
        params: dict[str, Any] = {
            "usernames": [u.username for u in users],
            "emails": [given(u, stored.get(u.username.lower()), "email") for u in users],
            "hashes": hashes,
            "roles": [given(u, stored.get(u.username.lower()), "role") for u in users],
            "active": [given(u, stored.get(u.username.lower()), "is_active") for u in users],
            "profile_types": [
                profile_types[u.profile_type] if u.profile_type else None for u in users
            ],
        }
        if update:
            params["keep"] = KEEP_HASH
        statement = _UPSERT if update else _INSERT
        versions = await upsert_recorded(session, statement, params, entity=USER)
    summary.written(len(batch) - len(refused), versions)
    return refused


def _check(protect: str | None) -> Callable[[ImportedUser], str | None]:
    def check(user: ImportedUser) -> str | None:
        if protect and user.username.lower() == protect.lower():
            return "an import does not change your own account"
        if user.password is None:
            return None
        try:
            check_password(user.password, username=user.username)
        except InvalidInput as exc:
            return f"password: {exc.detail}"
        return None

    return check


def users_bulk(protect: str | None = None, *, replace_hashes: bool = False) -> Bulk[ImportedUser]:
    """How users are imported (``protect``: an account no row may change; ``replace_hashes``:
    an update also puts the rows' hashes over the stored ones)."""
    return Bulk(
        ImportedUser,
        functools.partial(write_batch, replace_hashes=replace_hashes),
        _check(protect),
        csv_fields=csv_fields,
        prepare=hash_new,
        carry=_carried_hash,
        restore=_restore_hash,
    )


#: Keys the fingerprints that tie a hash kept between an atomic import's two readings to its
#: row; random per process, so a fingerprint is no fast hash of a password anyone can compute.
_FINGERPRINT_KEY = secrets.token_bytes(32)


def _fingerprint(user: ImportedUser) -> bytes:
    assert user.password is not None
    name = user.username.lower().encode()
    data = len(name).to_bytes(4, "big") + name + user.password.encode()
    return hmac.new(_FINGERPRINT_KEY, data, hashlib.sha256).digest()


def _carried_hash(user: ImportedUser) -> tuple[bytes, str] | None:
    """The hash ``hash_new`` made for this row, with what ties it to the row's username and
    password: the line it came from may hold another row when a file is read again."""
    if user._hashed is None:
        return None
    return _fingerprint(user), user._hashed


def _restore_hash(user: ImportedUser, kept: tuple[bytes, str]) -> None:
    """Put the kept hash back on the row it was made for; another row (the file changed
    between the readings) is hashed while it is written, as a row ``hash_new`` missed."""
    fingerprint, hashed = kept
    if user.password is not None and hmac.compare_digest(fingerprint, _fingerprint(user)):
        user._hashed = hashed
