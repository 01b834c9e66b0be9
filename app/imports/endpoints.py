"""``POST /api/v1/{users,settings,profile-types}/import``: another deployment's rows, streamed in.

The body is read as it arrives, a line at a time, so a file of a million rows costs the process
one batch, never the file; the administrator is checked in a session that ends before the body
is read, so no transaction (nor its locks) stays open while it streams in. Batches commit one by
one (``atomic=true``: one transaction for all, nothing kept if a row is bad; the body is held
in a temporary file first, at most 48 MiB, so that transaction opens once it is in, and read
from it twice for users: plain passwords are hashed before the transaction opens); the
answer is the summary, with each refused row's line number and reason. When rows were written,
the outbox sweeper is asked to run at once: the rows leave in the relay's large files rather
than one sync job per row.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from app.db import session_scope
from app.deps import BriefAdmin, QueueDep
from app.imports.rows import Format
from app.imports.run import Bulk, Chunks, import_stream, spooled
from app.profile_types.bulk import PROFILE_TYPES
from app.queue.client import JobQueue
from app.settings.bulk import SETTINGS
from app.users.bulk import users_bulk
from netsync.errors import ERROR_RESPONSES, InvalidInput

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)

_TYPES: dict[str, Format] = {
    "application/x-ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/json": "ndjson",
    "text/csv": "csv",
}

_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}

FormatQuery = Annotated[
    Literal["ndjson", "csv"] | None,
    Query(description="Default: from the Content-Type (text/csv, else NDJSON)."),
]
AtomicQuery = Annotated[bool, Query(description="Keep nothing if a row is bad.")]
UpdateQuery = Annotated[
    bool, Query(description="Also change rows that exist (default: leave them as they are).")
]


class RefusedRow(BaseModel):
    line: int
    error: str


class Imported(BaseModel):
    lines: int
    created: int
    updated: int
    unchanged: int
    #: Rows refused; ``errors`` lists the first hundred of them.
    failed: int
    errors: list[RefusedRow]
    #: The outbox sweeper was asked to export the written rows now (else it will within seconds).
    export_started: bool


async def _import(
    request: Request,
    queue: JobQueue,
    bulk: Bulk[Any],
    format: Format | None,
    *,
    atomic: bool,
    update: bool,
) -> Imported:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt: Format | None = format or _TYPES.get(media)
    if fmt is None:
        raise InvalidInput(f"unsupported Content-Type {media!r}: application/x-ndjson or text/csv")
    maker = request.app.state.sessionmaker
    async with contextlib.AsyncExitStack() as held:
        body: Chunks = (
            await held.enter_async_context(spooled(request.stream()))
            if atomic
            else request.stream  # read once
        )
        summary = await import_stream(
            bulk, lambda: session_scope(maker), body, fmt, atomic=atomic, update=update
        )
    written = summary.created + summary.updated
    started = bool(written) and await queue.enqueue_sweep() is not None
    return Imported.model_validate({**summary.as_dict(), "export_started": started})


@router.post("/users/import", tags=["users"], openapi_extra=_BODY)
async def import_users(
    request: Request,
    queue: QueueDep,
    admin: BriefAdmin,
    format: FormatQuery = None,
    atomic: AtomicQuery = False,
    update: UpdateQuery = False,
    replace_hashes: Annotated[
        bool,
        Query(
            description="With update, put the rows' password hashes over the stored ones too"
            " (default: a stored hash stays: its owner may have changed the password since)."
        ),
    ] = False,
) -> Imported:
    """Import users: one JSON object per line (or CSV with a header row) with ``username``,
    ``email``, ``role``, ``is_active`` and either ``password_hash`` (bcrypt or argon2, kept as it
    is) or ``password``. New usernames are created; existing ones are left as they are unless
    ``update=true`` (then the email, role and active flag the row gives replace the stored
    ones, and its ``password_hash`` too with ``replace_hashes=true``; a field it leaves out
    stays as it is). Your own account is never
    changed. A re-run changes nothing."""
    bulk = users_bulk(protect=admin.username, replace_hashes=replace_hashes)
    return await _import(request, queue, bulk, format, atomic=atomic, update=update)


@router.post("/settings/import", tags=["settings"], openapi_extra=_BODY)
async def import_settings(
    request: Request,
    queue: QueueDep,
    admin: BriefAdmin,
    format: FormatQuery = None,
    atomic: AtomicQuery = False,
    update: UpdateQuery = False,
) -> Imported:
    """Import settings: one JSON object per line (or CSV with a header row; its ``value`` column
    holds JSON text) with ``key``, ``value`` and an optional ``description``. New keys are
    created; existing ones are left as they are unless ``update=true`` (then the value and the
    description the row gives replace the stored ones). A re-run changes nothing."""
    return await _import(request, queue, SETTINGS, format, atomic=atomic, update=update)


@router.post("/profile-types/import", tags=["profile types"], openapi_extra=_BODY)
async def import_profile_types(
    request: Request,
    queue: QueueDep,
    admin: BriefAdmin,
    format: FormatQuery = None,
    atomic: AtomicQuery = False,
    update: UpdateQuery = False,
) -> Imported:
    """Import profile types: one JSON object per line (or CSV with a header row; permissions
    separated by spaces) with ``name``, an optional ``description`` and ``permissions``. Names
    match case-insensitively; new ones are created, existing ones are left as they are unless
    ``update=true``. A re-run changes nothing."""
    return await _import(request, queue, PROFILE_TYPES, format, atomic=atomic, update=update)
