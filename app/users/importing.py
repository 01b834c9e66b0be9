"""``POST /api/v1/users/import``: users of another deployment, streamed in (``app.users.bulk``).

The body is read as it arrives, a line at a time, so a file of a million users costs the
process one batch of rows, never the file; the administrator is checked in a session that ends
before the body is read, so no transaction (nor its locks) stays open while it streams in.
Batches commit one by one (``atomic=true``: one transaction for all, nothing kept if a row is
bad); the answer is the summary, with each refused row's line number and reason. When rows were
written, the outbox sweeper is asked to run at once: the rows leave in the relay's large files
rather than one sync job per user.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from app.db import session_scope
from app.deps import BriefAdmin, QueueDep
from app.users.bulk import Format, import_users
from netsync.errors import ERROR_RESPONSES, InvalidInput

router = APIRouter(prefix="/api/v1/users", tags=["users"], responses=ERROR_RESPONSES)


_TYPES: dict[str, Format] = {
    "application/x-ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/json": "ndjson",
    "text/csv": "csv",
}


class RefusedRow(BaseModel):
    line: int
    error: str


class UsersImported(BaseModel):
    lines: int
    created: int
    updated: int
    unchanged: int
    #: Rows refused; ``errors`` lists the first hundred of them.
    failed: int
    errors: list[RefusedRow]
    #: The outbox sweeper was asked to export the written rows now (else it will within seconds).
    export_started: bool


@router.post(
    "/import",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    },
)
async def import_users_endpoint(
    request: Request,
    queue: QueueDep,
    admin: BriefAdmin,
    format: Annotated[
        Literal["ndjson", "csv"] | None,
        Query(description="Default: from the Content-Type (text/csv, else NDJSON)."),
    ] = None,
    atomic: Annotated[bool, Query(description="Keep nothing if a row is bad.")] = False,
    update: Annotated[
        bool, Query(description="Also change users that exist (default: leave them as they are).")
    ] = False,
) -> UsersImported:
    """Import users: one JSON object per line (or CSV with a header row) with ``username``,
    ``email``, ``role``, ``is_active`` and either ``password_hash`` (bcrypt or argon2, kept as it
    is) or ``password``. New usernames are created; existing ones are left as they are unless
    ``update=true`` (then their email, role, active flag and, from ``password_hash``, their hash
    follow the row). Your own account is never changed. A re-run changes nothing."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt: Format | None = format or _TYPES.get(media)
    if fmt is None:
        raise InvalidInput(f"unsupported Content-Type {media!r}: application/x-ndjson or text/csv")
    maker = request.app.state.sessionmaker
    summary = await import_users(
        lambda: session_scope(maker),
        request.stream(),
        fmt,
        atomic=atomic,
        update=update,
        protect=admin.username,
    )
    written = summary.created + summary.updated
    started = bool(written) and await queue.enqueue_sweep() is not None
    return UsersImported.model_validate({**summary.as_dict(), "export_started": started})
